"""Images from disk: a folder of captioned pictures as a dataset, and image grids out.

A folder is read in one of two layouts:
  captions.jsonl   one JSON object per line, {"file": "cat.jpg", "caption": "a cat"}
                   (files relative to the folder; the same file may appear twice)
  name.jpg + name.txt   each image beside a text file holding its caption
Every image is converted to RGB, resized so its shorter side is `image_size` (Lanczos),
centre-cropped to a square, and kept as a float tensor in [-1, 1]. Problems (a file that
is not an image, a caption naming a missing image, an empty folder) raise TinygenError
naming the file and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from tinygen.errors import TinygenError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CAPTIONS_FILE = "captions.jsonl"


def open_rgb(path: str | Path):
    """One image file as an upright RGB PIL image (EXIF orientation applied), or the error
    that names the file and the fix."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError as e:
        raise TinygenError(f"image {path} does not exist; fix the caption file or add it") from e
    except (UnidentifiedImageError, OSError) as e:
        raise TinygenError(
            f"{path} is not an image Pillow can read ({e.__class__.__name__}); remove it or "
            "replace it with a JPEG/PNG"
        ) from e


def load_image(path: str | Path, image_size: int) -> Tensor:
    """One image file -> (3, image_size, image_size) float in [-1, 1]: RGB, shorter side
    resized to image_size, centre crop."""
    from PIL import Image

    im = open_rgb(path)
    w, h = im.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    im = im.resize((new_w, new_h), Image.LANCZOS)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    data = data.view(image_size, image_size, 3).permute(2, 0, 1)  # (3, S, S)
    return data.float() / 127.5 - 1.0


def _read_jsonl(root: Path) -> list[tuple[Path, str]]:
    pairs = []
    path = root / CAPTIONS_FILE
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            file, caption = row["file"], row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TinygenError(
                f'{path} line {number} is not a JSON object with "file" and "caption" '
                f"({e.__class__.__name__}); write lines like "
                '{"file": "cat.jpg", "caption": "a cat"}'
            ) from e
        image = root / file
        if not image.is_file():
            raise TinygenError(
                f"{path} line {number} names {file!r}, which is not in {root}; add the image "
                "or remove the line"
            )
        pairs.append((image, str(caption)))
    return pairs


def _read_pairs(root: Path) -> list[tuple[Path, str]]:
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    images = {p.stem: p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = []
    for text in (p for p in files if p.suffix.lower() == ".txt"):
        if text.stem not in images:
            raise TinygenError(
                f"caption {text} names no image: there is no {text.stem}.jpg/.png/... beside "
                "it; add the image or remove the caption"
            )
        pairs.append((images[text.stem], text.read_text(encoding="utf-8").strip()))
    uncaptioned = sorted(set(images) - {p.stem for p, _ in pairs})
    if uncaptioned:
        raise TinygenError(
            f"{len(uncaptioned)} image(s) in {root} have no caption (e.g. "
            f"{images[uncaptioned[0]].name}); add {uncaptioned[0]}.txt beside each, or list "
            f"them in {CAPTIONS_FILE}"
        )
    return pairs


class ImageFolderDataset:
    """Captioned images from a folder, loaded once into memory.

    images (N, 3, S, S) in [-1, 1]; captions: N strings; `dataset[i]` is (image, caption).
    """

    def __init__(self, root: str | Path, *, image_size: int = 32) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TinygenError(
                f"image folder {self.root} does not exist; pass --data of a "
                "folder of images with captions"
            )
        if image_size <= 0:
            raise TinygenError(f"image_size must be positive, got {image_size}")
        if (self.root / CAPTIONS_FILE).is_file():
            pairs = _read_jsonl(self.root)
        else:
            pairs = _read_pairs(self.root)
        if not pairs:
            raise TinygenError(
                f"{self.root} holds no captioned images; add {CAPTIONS_FILE} or name.jpg + "
                "name.txt pairs"
            )
        self.files = [p for p, _ in pairs]
        self.captions = [c for _, c in pairs]
        self.images = torch.stack([load_image(p, image_size) for p in self.files])

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        return self.images[i], self.captions[i]

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, list[str]]:
        """A random batch (with replacement): images (B, 3, S, S) and their captions."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        return self.images[idx], [self.captions[i] for i in idx.tolist()]


def save_image_grid(
    images: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1, padding: int = 2
) -> Path:
    """Write images (N, 3, H, W) in [-1, 1] as one PNG grid (`nrow` per row, default
    about square), each image magnified `scale` times with nearest-neighbour pixels."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] != 3:
        raise TinygenError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(
        3, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8
    )
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[i]
    picture = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
