"""Captioned images from disk: both layouts, resize + centre crop, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tinygen.data.image_folder import ImageFolderDataset, load_image, save_image_grid
from tinygen.errors import TinygenError


def _striped(width: int = 40, height: int = 20) -> Image.Image:
    """Red | green | blue vertical bands; the middle (green) band is `height` wide."""
    im = Image.new("RGB", (width, height), (0, 255, 0))
    side = (width - height) // 2
    im.paste((255, 0, 0), (0, 0, side, height))
    im.paste((0, 0, 255), (width - side, 0, width, height))
    return im


def test_resize_and_centre_crop_keep_the_middle_of_a_wide_image(tmp_path):
    _striped().save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", 10)  # 40x20 -> 20x10 -> middle 10x10
    assert image.shape == (3, 10, 10)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)
    assert (image[:, :, 2:8] - green).abs().max() < 0.05  # interior columns: pure green
    tall = _striped().rotate(90, expand=True)  # 20x40: bands now horizontal
    tall.save(tmp_path / "tall.png")
    assert (load_image(tmp_path / "tall.png", 10)[:, 2:8, :] - green).abs().max() < 0.05


def test_jsonl_layout_loads_images_and_captions_in_order(tmp_path):
    Image.new("L", (16, 16), 255).save(tmp_path / "white.png")  # greyscale -> RGB
    Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(tmp_path / "red.png")
    lines = [{"file": "white.png", "caption": "white"}, {"file": "red.png", "caption": "red"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = ImageFolderDataset(tmp_path, image_size=8)
    assert data.captions == ["white", "red"] and data.images.shape == (2, 3, 8, 8)
    assert torch.allclose(data.images[0], torch.ones(3, 8, 8))
    assert torch.allclose(data.images[1, 0], torch.ones(8, 8))
    assert torch.allclose(data.images[1, 1:], -torch.ones(2, 8, 8))
    image, caption = data[1]
    assert caption == "red" and torch.equal(image, data.images[1])


def test_pair_layout_reads_each_caption_beside_its_image(tmp_path):
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        Image.new("RGB", (12, 12), colour).save(tmp_path / f"{name}.jpg", quality=100)
        (tmp_path / f"{name}.txt").write_text(f"picture {name}\n")
    data = ImageFolderDataset(tmp_path, image_size=12)
    assert data.captions == ["picture a", "picture b"]
    images, captions = data.sample(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 12, 12) and len(captions) == 5
    for image, caption in zip(images, captions):
        expected = 0 if caption == "picture a" else 2  # the bright channel of each picture
        assert image[expected].mean() > 0.9


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    (tmp_path / "fake.jpg").write_text("this is not a JPEG")
    (tmp_path / "fake.txt").write_text("a fake")
    with pytest.raises(TinygenError, match="fake.jpg is not an image"):
        ImageFolderDataset(tmp_path)


def test_a_caption_naming_a_missing_image_is_named(tmp_path):
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "gone.png", "caption": "x"}))
    with pytest.raises(TinygenError, match="'gone.png'"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "lonely.txt").write_text("no picture")
    with pytest.raises(TinygenError, match="lonely.txt names no image"):
        ImageFolderDataset(tmp_path)


def test_empty_folder_bad_lines_and_uncaptioned_images_are_explained(tmp_path):
    with pytest.raises(TinygenError, match="no captioned images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(TinygenError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(TinygenError, match="have no caption"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file": "x.png"}\n')
    with pytest.raises(TinygenError, match="line 1"):
        ImageFolderDataset(tmp_path)


def test_saved_grid_holds_the_images_pixel_for_pixel(tmp_path):
    images = torch.rand(5, 3, 6, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = save_image_grid(images, tmp_path / "grid.png", nrow=3, padding=1)
    grid = torch.tensor(list(Image.open(path).getdata()), dtype=torch.float32)
    with Image.open(path) as im:
        assert im.size == (3 * 8 + 1, 2 * 7 + 1)
        grid = grid.view(im.height, im.width, 3).permute(2, 0, 1)
    r, c = divmod(4, 3)  # image 4: row 1, column 1
    top, left = 1 + r * 7, 1 + c * 8
    expected = ((images[4] + 1) * 127.5).round()
    assert torch.equal(grid[:, top : top + 6, left : left + 7], expected)
