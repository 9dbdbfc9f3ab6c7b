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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would create, read once at import


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the mode a plain open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _decode_lines(path: Path, lines: list[bytes]) -> list[str]:
    out, bad = [], []
    for i, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad.append(f"line {i} byte {e.start}: {line[max(0, e.start - 10):e.start + 10]!r}")
    if bad:
        raise LrlError(
            f"{path} is not UTF-8 ({len(bad)} bad line(s); first: {bad[0]}). "
            "Convert it, e.g. `iconv -f LATIN1 -t UTF-8 in.txt > out.txt`."
        )
    return out


def _read_raw(path: Path) -> bytes:
    if not path.is_file():
        raise LrlError(f"{path}: no such file")
    raw = path.read_bytes()
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def read_text_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (a BOM is dropped, line ends stripped). Raises LrlError naming the
    first lines that are not UTF-8, rather than guessing an encoding."""
    path = Path(path)
    raw = _read_raw(path)
    return _decode_lines(path, raw.splitlines())


def _table_lines(path: Path) -> list[str]:
    """Lines of a table, split at LF only (CRLF tolerated): a lone CR inside a sentence stays in its field."""
    raw = _read_raw(path)
    lines = raw.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return _decode_lines(path, [line[:-1] if line.endswith(b"\r") else line for line in lines])


def read_table(path: str | Path, bad_rows: list[tuple[int, str]] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a .tsv, .csv or .jsonl manifest. TSVs are read with QUOTE_NONE (Common Voice);
    CSV fields may hold quoted newlines. A row with more or fewer fields than the header (a tab inside a
    sentence, a cut line) or a JSONL line that is not an object is never re-aligned: it raises LrlError
    with its line number, or, when `bad_rows` is given, is left out and appended there as (line, detail)."""
    path = Path(path)
    lines = _table_lines(path)
    if not any(line.strip() for line in lines):
        raise LrlError(f"{path} is empty")

    def bad(i: int, detail: str) -> None:
        if bad_rows is None:
            raise LrlError(f"{path}:{i}: {detail}")
        bad_rows.append((i, detail))

    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                bad(i, f"not a JSON object ({e.msg})")
                continue
            if not isinstance(obj, dict):
                bad(i, f"expected a JSON object per line, got {type(obj).__name__}")
                continue
            rows.append({k: "" if v is None else str(v) for k, v in obj.items()})
        header = list(dict.fromkeys(k for r in rows for k in r))
        return header, rows
    if suffix == ".csv":
        reader = csv.reader(line + "\n" for line in lines)  # with their ends, quoted newlines stay in the field
        records = _csv_records(path, reader)
    else:  # QUOTE_NONE: a tab is the only separator; quotes and a lone CR are text
        records = ((i, line.split("\t")) for i, line in enumerate(lines, start=1))
    header: list[str] | None = None
    rows = []
    for i, fields in records:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in fields]
            continue
        if len(fields) != len(header):
            bad(i, f"{len(fields)} fields, but the header has {len(header)} (a tab inside a field, or a cut line?)")
            continue
        rows.append(dict(zip(header, fields, strict=True)))
    return header or [], rows


def _csv_records(path: Path, reader) -> Iterator[tuple[int, list[str]]]:
    """(last line number, fields) of each CSV record (a quoted field may span lines)."""
    try:
        for fields in reader:
            yield reader.line_num, fields
    except csv.Error as e:
        raise LrlError(f"{path}:{reader.line_num + 1}: not valid CSV ({e}); quote fields that hold commas, "
                       "quotes or line breaks") from e


def iter_files(folder: str | Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under `folder` with one of `suffixes` (lowercase, with dot), sorted, symlinks not followed out."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in suffixes:
            yield p
