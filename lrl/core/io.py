"""Reading and writing the files lrl touches: atomic writes, UTF-8 text with line-numbered errors,
and TSV/CSV/JSONL tables (Common Voice TSVs need QUOTE_NONE: their sentences hold unbalanced quotes)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class LrlError(Exception):
    """An error in the user's input or environment, with a message that says what to do.
    The CLI prints these without a traceback."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_text_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (a BOM is dropped, line ends stripped). Raises LrlError naming the
    first lines that are not UTF-8, rather than guessing an encoding."""
    path = Path(path)
    if not path.is_file():
        raise LrlError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, bad = [], []
    for i, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad.append(f"line {i} byte {e.start}: {line[max(0, e.start - 10):e.start + 10]!r}")
    if bad:
        raise LrlError(
            f"{path} is not UTF-8 ({len(bad)} bad line(s); first: {bad[0]}). "
            "Convert it, e.g. `iconv -f LATIN1 -t UTF-8 in.txt > out.txt`."
        )
    return lines


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a .tsv, .csv or .jsonl manifest. TSVs are read with QUOTE_NONE (Common Voice);
    a row with more or fewer fields than the header raises LrlError with its line number."""
    path = Path(path)
    lines = read_text_lines(path)
    if not any(line.strip() for line in lines):
        raise LrlError(f"{path} is empty")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LrlError(f"{path}:{i}: not a JSON object ({e.msg})") from e
            if not isinstance(obj, dict):
                raise LrlError(f"{path}:{i}: expected a JSON object per line, got {type(obj).__name__}")
            rows.append({k: "" if v is None else str(v) for k, v in obj.items()})
        header = list(dict.fromkeys(k for r in rows for k in r))
        return header, rows
    if suffix == ".csv":
        reader = csv.reader(lines)
    else:
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header: list[str] | None = None
    rows = []
    for i, fields in enumerate(reader, start=1):
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in fields]
            continue
        if len(fields) < len(header):  # trailing empty CV columns are sometimes cut off
            fields = fields + [""] * (len(header) - len(fields))
        if len(fields) > len(header):
            raise LrlError(f"{path}:{i}: {len(fields)} fields, but the header has {len(header)}")
        rows.append(dict(zip(header, fields, strict=True)))
    return header or [], rows


def iter_files(folder: str | Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under `folder` with one of `suffixes` (lowercase, with dot), sorted, symlinks not followed out."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in suffixes:
            yield p
