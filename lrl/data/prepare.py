"""Data preparation: a Common Voice folder, a TSV/CSV/JSONL manifest or a folder of audio + same-named .txt
becomes a 16 kHz `datasets.DatasetDict` on disk (splits train/dev/test, columns id, audio, text, sentence,
duration, speaker + source metadata), with the vocabulary in DIR/vocab. Every input row is kept or listed
in DIR/skipped.tsv with its reason; DIR/summary.json holds the counts and an input fingerprint so that a
rerun on identical inputs reuses the output. Output is written to DIR.tmp-<pid> and renamed at the end, under
a lock on DIR (lrl.data.guard); only a directory marked as prepared by lrl is ever replaced. With a Shard only
that part of the rows is decoded, after the vocabulary is built from all of them (lrl.data.shards).
The content filters (OOV, duration, chars/s) protect training; dev/test keep such rows unless `filter_eval`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lrl.core import hf_datasets
from lrl.core.audio import AudioError, load_audio
from lrl.core.constants import AUDIO_SUFFIXES, SAMPLE_RATE, TEXT_COLUMNS
from lrl.core.io import LrlError, atomic_write_text, iter_files, read_table, read_text_lines
from lrl.core.procs import sigterm_as_interrupt
from lrl.core.text import DigitsInText, Normalizer, NormalizerConfig
from lrl.data import guard, shards
from lrl.data.shards import Shard

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the output layout changes: old outputs are then not reused
SUMMARY_FILE = "summary.json"
SKIPPED_FILE = "skipped.tsv"
VOCAB_DIR = "vocab"
CV_TABLES = ("train", "dev", "test", "validated", "other", "invalidated")
AUDIO_COLUMNS = ("path", "audio", "audio_path", "audio_filepath", "file", "filename", "wav", "clip")
SPEAKER_COLUMNS = ("client_id", "speaker", "speaker_id")
CLIP_DURATIONS = "clip_durations.tsv"  # Common Voice: clip -> duration[ms], checked against the decoded audio
CLIP_DURATION_TOLERANCE = 0.1  # seconds of difference always accepted (encoder padding)
# A clip that decodes this much shorter than the duration its source gives (clip_durations.tsv, a manifest's
# duration column) is cut: its label names words the audio lacks, and CTC learns to emit letters over silence
# or noise. Encoder delay and padding explain < 0.1 s (mp3: ~50 ms), a re-encode rarely 1-2%; a cut mp3 with no
# Xing header decodes without error to wherever the file stops (4.25 s of 12.75 s in issue 14).
TRUNCATED_SHORTFALL_S = 0.5  # seconds missing, and...
TRUNCATED_SHORTFALL_SHARE = 0.1  # ...this share of the expected duration: both must be exceeded
DURATION_COLUMNS = {"duration": 1.0, "duration_s": 1.0, "duration[ms]": 0.001, "duration_ms": 0.001}  # -> s
VOTE_COLUMNS = ("up_votes", "down_votes")  # CV: whole numbers in every row of a release
LOG_NAMED = 10  # clips named one by one in the log per skip reason; skipped.tsv lists them all
CORE_COLUMNS = ("id", "audio", "text", "sentence", "duration", "speaker")
RENAMED_COLUMNS = {"accent": "accents"}  # old CV releases: one schema for all
# Duplicates keep the copy in the most protected split: a clip in both train and test stays in test.
SPLIT_PRIORITY = ("test", "dev", "train")
# Splits a recogniser is scored on: it meets long clips and unknown characters in use, so the content filters
# (there for CTC training) spare these splits unless PrepareConfig.filter_eval.
EVAL_SPLITS = ("dev", "test")
WRITE_BATCH = 32  # rows per Arrow record batch (a worker holds at most this many decoded clips)
WRITE_BATCH_SAMPLES = 2**26  # ...or this many samples (256 MB; Arrow list offsets are int32)
CHUNK_MIN, CHUNK_MAX = 16, 256  # rows per worker task; each task writes one Arrow shard of the split

OovPolicy = Literal["drop", "unk"]


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` keeps. Saved in summary.json; all fields but num_proc, overwrite and licence enter the
    input fingerprint (they do not change the dataset)."""

    splits: tuple[str, ...] = ("train", "dev", "test")  # output splits (CV: <split>.tsv; manifests: `split` column)
    train_from_validated: bool = False  # CV: train = validated.tsv minus dev/test clips and sentences
    min_duration: float = 1.0  # seconds; shorter clips carry too little speech for CTC
    max_duration: float = 20.0  # seconds; longer clips blow up attention memory on CPU/GPU
    max_chars_per_second: float = 25.0  # label length bound: CTC needs >= 1 frame (20 ms) per label
    oov: OovPolicy = "drop"  # transcripts with characters outside the vocab: drop the row or keep ([UNK])
    filter_eval: bool = False  # apply the content filters (OOV, duration, chars/s) to dev/test too
    check_votes: bool = True  # CV: skip rows with down_votes >= up_votes (when any votes are cast)
    language: str | None = None  # ISO 639 code for the normaliser when the vocab is built here; card metadata
    licence: str | None = None  # licence of the corpus (card metadata), e.g. cc0-1.0
    text_column: str | None = None  # manifests: transcript column (default: first of TEXT_COLUMNS)
    audio_column: str | None = None  # manifests: audio path column (default: first of AUDIO_COLUMNS)
    num_proc: int = 1  # decoding worker processes
    overwrite: bool = False  # replace an existing output prepared from other inputs

    def __post_init__(self) -> None:
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must be distinct names such as ('train', 'dev', 'test'), got {self.splits!r}")
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(
                f"min_duration must be in [0, max_duration={self.max_duration}) s, got {self.min_duration}"
            )
        if self.max_chars_per_second <= 0:
            raise ValueError(f"max_chars_per_second must be > 0, got {self.max_chars_per_second}")
        if self.oov not in get_args(OovPolicy):
            raise ValueError(f"oov must be one of {list(get_args(OovPolicy))}, got {self.oov!r}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Row:
    split: str
    id: str
    path: str  # as written in the source
    sentence: str
    speaker: str = ""
    meta: dict = field(default_factory=dict)
    file: Path | None = None  # resolved, inside the corpus root
    text: str = ""
    unfiltered: str = ""  # the content filter that would have dropped this kept row in training (dev/test)
    expected: float | None = None  # seconds, the duration the source gives (checked against the decoded audio)


def _filters(config: PrepareConfig, split: str) -> bool:
    """Whether the content filters (OOV, duration, chars/s) drop rows of `split`."""
    return config.filter_eval or split not in EVAL_SPLITS


# -- reading sources ----------------------------------------------------------------------------------
def _pick(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    col = wanted or next((c for c in candidates if c in header), None)
    if col is None or col not in header:
        want = repr(wanted) if wanted else f"one of {list(candidates)}"
        raise LrlError(f"{path}: no {what} column ({want}); its columns are {header}. Name it with --{what}-column.")
    return col


def _bad_votes(r: dict) -> str | None:
    """CV: why a row's vote columns are not whole numbers (a tab inside the sentence shifts every later column)."""
    for c in VOTE_COLUMNS:
        if c in r and not r[c].strip().isdigit():
            return f"{c} is {r[c]!r}, expected a whole number: a tab inside the sentence shifts the columns; remove it"
    return None


def _duration(r: dict) -> float | None:
    """Seconds from the first duration column a manifest has (None when absent, empty or not a number)."""
    c = next((c for c in DURATION_COLUMNS if c in r), None)
    try:
        return float(r[c]) * DURATION_COLUMNS[c] if c is not None and r[c].strip() else None
    except ValueError:
        return None


def _rows_from_table(path: Path, split_of, config: PrepareConfig, cv: bool) -> list[_Row]:
    """Rows of a CV table or manifest. A row whose fields do not match the header (or, in CV, whose votes are
    not numbers) becomes a row marked `_bad_row`, skipped as `bad_row`: never re-aligned by guessing."""
    bad: list[tuple[int, str]] = []
    header, table = read_table(path, bad_rows=bad)
    header = [RENAMED_COLUMNS.get(h, h) for h in header]
    table = [{RENAMED_COLUMNS.get(k, k): v for k, v in r.items()} for r in table]
    if cv:
        missing = [c for c in ("path", "sentence") if c not in header]
        if missing:
            raise LrlError(f"{path}: no {' or '.join(repr(c) for c in missing)} column (a Common Voice table has "
                           f"path and sentence); its columns are {header}. Fix the header line.")
    audio_col = "path" if cv else _pick(header, config.audio_column, AUDIO_COLUMNS, "audio", path)
    text_col = "sentence" if cv else _pick(header, config.text_column, TEXT_COLUMNS, "text", path)
    spk_col = next((c for c in SPEAKER_COLUMNS if c in header), None)
    used = {audio_col, text_col, spk_col, "split", "id"}
    meta_cols = [c for c in header if c not in used]
    rows = []
    for i, r in enumerate(table, start=2):
        rel = r.get(audio_col, "").strip()
        rid = r.get("id") or (f"{path.name}:{i}" if not rel else Path(rel).stem if cv else str(Path(rel).with_suffix("")))
        meta = {(f"src_{c}" if c in CORE_COLUMNS else c): r.get(c, "") for c in meta_cols}
        sentence = " ".join(r.get(text_col, "").splitlines())  # a quoted newline in a CSV field is a space
        row = _Row(split_of(r), rid, rel, sentence, r.get(spk_col, "") if spk_col else "", meta, expected=_duration(r))
        why = _bad_votes(r) if cv else None
        if why:
            row.meta["_bad_row"] = why
        rows.append(row)
    default = split_of({})
    rows += [_Row(default, f"{path.name}:{i}", "", "", meta={"_bad_row": f"{path.name} line {i}: {detail}"})
             for i, detail in bad]
    return rows


def _read_cv(src: Path, config: PrepareConfig) -> tuple[list[_Row], list[_Row], list[Path]]:
    """(rows to prepare, rows held out of validated, tables read)."""
    tables, rows, held = [], [], []
    for split in config.splits:
        name = "validated" if (split == "train" and config.train_from_validated) else split
        p = src / f"{name}.tsv"
        if not p.is_file():
            if split in ("dev", "test") or name == "validated":
                logger.warning("%s: no %s.tsv, so no %s split", src, name, split)
                continue
            raise LrlError(f"{src}: no {name}.tsv; the Common Voice TSVs there are "
                           f"{sorted(x.name for x in src.glob('*.tsv'))}. Choose others with --splits.")
        tables.append(p)
        rows += _rows_from_table(p, lambda r, s=split: s, config, cv=True)
    if config.train_from_validated and "train" in config.splits:
        eval_rows = []
        for s in ("dev", "test"):
            p = src / f"{s}.tsv"
            if p.is_file():
                if p not in tables:
                    tables.append(p)
                eval_rows += _rows_from_table(p, lambda r, s=s: s, config, cv=True)
        clips = {r.path for r in eval_rows}
        sentences = {r.sentence.strip() for r in eval_rows}
        keep = []
        for r in rows:
            if r.split == "train" and (r.path in clips or r.sentence.strip() in sentences):
                r.meta["_held"] = "clip in dev/test" if r.path in clips else "sentence in dev/test"
                held.append(r)
            else:
                keep.append(r)
        rows = keep
    durations = _clip_durations(src / CLIP_DURATIONS)
    if durations:
        tables.append(src / CLIP_DURATIONS)
        for r in rows:
            r.expected = durations.get(Path(r.path).name, r.expected)
    return rows, held, tables


def _clip_durations(path: Path) -> dict[str, float]:
    """Common Voice's clip -> duration in seconds (empty when the file is absent)."""
    if not path.is_file():
        return {}
    ms = {}
    for r in read_table(path, bad_rows=[])[1]:
        try:
            ms[r.get("clip", "")] = float(r.get("duration[ms]", "")) / 1000
        except ValueError:
            continue
    return ms


def _read_manifest(path: Path, config: PrepareConfig) -> list[_Row]:
    header, _ = read_table(path, bad_rows=[])  # bad rows are counted by _rows_from_table
    has_split = "split" in header
    default = "train" if "train" in config.splits else config.splits[0]
    rows = _rows_from_table(path, lambda r: (r.get("split") or default) if has_split else default, config, cv=False)
    if not has_split:
        logger.info("%s has no 'split' column: every row goes to %s", path, default)
    return rows


def _read_folder(src: Path, config: PrepareConfig) -> tuple[list[_Row], list[Path]]:
    """(rows, transcript files) of audio files with a same-named .txt; top-level folders named after splits
    give the split. A missing or unreadable .txt makes the row a `missing_transcript` skip."""
    default = "train" if "train" in config.splits else config.splits[0]
    rows, texts = [], []
    for p in iter_files(src, AUDIO_SUFFIXES):
        rel = p.relative_to(src)
        split = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in config.splits else default
        txt = p.with_suffix(".txt")
        row = _Row(split, str(rel.with_suffix("")), str(rel), "")
        if txt.exists() and not txt.resolve().is_relative_to(src.resolve()):  # a symlink out of the corpus
            row.meta["_unsafe_transcript"] = f"{txt.relative_to(src)} links outside {src}"
            rows.append(row)
            continue
        try:
            row.sentence = " ".join(read_text_lines(txt))
            texts.append(txt)
        except LrlError as e:
            row.meta["_missing_transcript"] = str(e)
        rows.append(row)
    return rows, texts


def read_source(src: str | Path, config: PrepareConfig) -> tuple[str, Path, list[_Row], list[_Row], list[Path]]:
    """(kind, clip root, rows, held-out rows, tables read) of a CV folder, a manifest or an audio folder."""
    src = Path(src)
    if src.is_file():
        if src.suffix.lower() not in (".tsv", ".csv", ".jsonl"):
            raise LrlError(f"{src}: expected a Common Voice folder, a .tsv/.csv/.jsonl manifest or a folder of audio")
        return "manifest", src.parent, _read_manifest(src, config), [], [src]
    if not src.is_dir():
        raise LrlError(f"{src}: no such file or folder")
    if any((src / f"{t}.tsv").is_file() for t in CV_TABLES):
        if not (src / "clips").is_dir():
            raise LrlError(f"{src} has Common Voice TSVs but no clips/ folder next to them")
        rows, held, tables = _read_cv(src, config)
        return "common_voice", src / "clips", rows, held, tables
    rows, texts = _read_folder(src, config)
    if not rows:
        raise LrlError(f"{src}: no Common Voice TSVs and no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return "folder", src, rows, [], texts


# -- filters ------------------------------------------------------------------------------------------
def _resolve(row: _Row, root: Path) -> str | None:
    """Set row.file; returns a skip reason for paths that are empty, absolute or leave the root."""
    if not row.path.strip():
        return "no_path"
    p = Path(row.path)
    if p.is_absolute() or ".." in p.parts:
        return "unsafe_path"
    f = (root / p).resolve()
    if not f.is_relative_to(root.resolve()):  # a symlink out of the corpus
        return "unsafe_path"
    row.file = f
    return None


def _votes(row: _Row) -> tuple[int, int] | None:
    try:
        return int(row.meta.get("up_votes", "")), int(row.meta.get("down_votes", ""))
    except ValueError:
        return None


def _fingerprinted(config: PrepareConfig) -> dict:
    """The config fields that change the dataset (all but num_proc, overwrite and licence)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("num_proc", "overwrite", "licence")}


def fingerprint(config: PrepareConfig, tables: list[Path], rows: list[_Row], vocab_dir: Path | None) -> str:
    """sha256 of the config (without num_proc, overwrite, licence), the tables and clips read (size + mtime), the vocab."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "config": _fingerprinted(config)}, sort_keys=True, default=str).encode())
    for p in [*tables, *(r.file for r in rows if r.file is not None)]:
        try:
            st = p.stat()
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\tmissing\n".encode())
    if vocab_dir is not None:
        for name in ("vocab.json", "normalizer.json"):
            f = Path(vocab_dir) / name
            h.update(f.read_bytes() if f.is_file() else b"-")
    return h.hexdigest()


# -- decoding -----------------------------------------------------------------------------------------
def _decode(path: Path):
    """(samples, None) or (None, (reason, detail))."""
    try:
        return load_audio(path, SAMPLE_RATE), None
    except AudioError as e:
        return None, ("missing_clip" if e.reason == "missing" else e.reason, str(e).replace(f"{path}: ", ""))
    except Exception as e:  # noqa: BLE001 - one odd clip must not end a run of thousands
        return None, ("not_audio", f"{type(e).__name__}: {e}")


def _features(meta_cols: list[str]) -> dict:
    """The `datasets.Features.to_dict()` of the output columns. Written by hand so that preparing does not
    import `datasets` (a second of CPU); tests/test_data.py checks it against the installed datasets."""
    value = lambda dtype: {"dtype": dtype, "_type": "Value"}  # noqa: E731
    cols = {"id": value("string"), "audio": {"feature": value("float32"), "_type": "List"}, "text": value("string"),
            "sentence": value("string"), "duration": value("float64"), "speaker": value("string")}
    cols.update({c: value("string") for c in meta_cols})
    return cols


def _batch_table(batch: list[tuple[_Row, object]], schema, meta_cols: list[str]):
    import numpy as np
    import pyarrow as pa

    arrays = [a for _, a in batch]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    cols = {
        "id": [r.id for r, _ in batch],
        "audio": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(arrays), pa.float32())),
        "text": [r.text for r, _ in batch],
        "sentence": [r.sentence for r, _ in batch],
        "duration": [len(a) / SAMPLE_RATE for a in arrays],
        "speaker": [r.speaker for r, _ in batch],
        **{c: [r.meta.get(c, "") for r, _ in batch] for c in meta_cols},
    }
    return pa.table([c.cast(f.type) if isinstance(c, pa.Array) else pa.array(c, f.type)
                     for f, c in ((f, cols[f.name]) for f in schema)], schema=schema)


@dataclass
class _Chunk:
    """A run of rows of one split, decoded, filtered and written to one Arrow shard by one worker."""

    rows: list[_Row]
    path: Path  # the shard to write (not created when no row is kept)
    schema: object  # pyarrow.Schema with the datasets features metadata
    meta_cols: list[str]
    config: PrepareConfig


def _run_chunk(chunk: _Chunk) -> list[tuple[float | None, tuple[str, str] | None, str]]:
    """Worker: per row (duration, None, unfiltered) when kept or (None, (reason, detail), ""); `unfiltered` names
    the content filter the row passed only for being in an evaluation split. Audio never leaves the worker:
    it goes straight into the chunk's Arrow stream file, in record batches of WRITE_BATCH rows."""
    import pyarrow as pa

    c, out, batch, writer, n_samples = chunk.config, [], [], None, 0

    def flush():
        nonlocal writer, n_samples
        n_samples = 0
        if batch:
            if writer is None:
                writer = pa.ipc.new_stream(pa.OSFile(str(chunk.path), "wb"), chunk.schema)
            writer.write_table(_batch_table(batch, chunk.schema, chunk.meta_cols))
            batch.clear()

    try:
        for row in chunk.rows:
            samples, skip = _decode(row.file)
            content = None
            if skip is None:
                dur = len(samples) / SAMPLE_RATE
                if row.expected is not None and row.expected - dur > max(TRUNCATED_SHORTFALL_S,
                                                                          TRUNCATED_SHORTFALL_SHARE * row.expected):
                    skip = ("truncated", f"decoded {dur:.2f} s of the {row.expected:.2f} s the source gives")
                elif dur < c.min_duration:
                    content = ("too_short", f"{dur:.2f} s < {c.min_duration} s")
                elif dur > c.max_duration:
                    content = ("too_long", f"{dur:.2f} s > {c.max_duration} s")
                elif len(row.text) / dur > c.max_chars_per_second:
                    content = ("label_too_long", f"{len(row.text)} chars in {dur:.2f} s > {c.max_chars_per_second}/s")
                if content is not None and _filters(c, row.split):
                    skip = content
            if skip is not None:
                out.append((None, skip, ""))
                continue
            out.append((dur, None, content[0] if content else ""))
            batch.append((row, samples))
            n_samples += len(samples)
            if len(batch) >= WRITE_BATCH or n_samples >= WRITE_BATCH_SAMPLES:
                flush()
        flush()
    finally:
        if writer is not None:
            writer.close()
    return out


def _chunks(rows: list[_Row], directory: Path, schema, meta_cols, config: PrepareConfig) -> list[_Chunk]:
    """Contiguous runs of one split: about 4 per worker, 16-256 rows each (a shard file each)."""
    by_split: dict[str, list[_Row]] = defaultdict(list)
    for r in rows:
        by_split[r.split].append(r)
    chunks = []
    for split, rs in by_split.items():
        size = min(CHUNK_MAX, max(CHUNK_MIN, -(-len(rs) // (4 * config.num_proc))))
        for i in range(0, len(rs), size):
            path = directory / split / f"part-{i // size:05d}.arrow"
            chunks.append(_Chunk(rs[i:i + size], path, schema, meta_cols, config))
    return chunks


def _start_pool(num_proc: int, n_chunks: int):
    """A process pool, or None to work in this process. Fork (no re-import of __main__, so scripts without
    a main guard work), started before any thread of ours exists."""
    import multiprocessing as mp

    if num_proc == 1 or n_chunks < 2:
        return None
    from concurrent.futures import ProcessPoolExecutor

    import pyarrow  # noqa: F401 - loaded once, inherited by the forked workers
    import soundfile  # noqa: F401
    import soxr  # noqa: F401

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    pool = ProcessPoolExecutor(min(num_proc, n_chunks), mp_context=mp.get_context(method),
                               initializer=guard.worker_init, initargs=(os.getpid(),))
    pool.submit(int).result()  # with fork, the first submit starts every worker: now, while we are one thread
    return pool


def _run_chunks(chunks: list[_Chunk], pool, skipped: list) -> list[tuple[_Row, float]]:
    """Runs every chunk (in `pool` if given), in input order; returns kept (row, duration), extends skipped."""
    from tqdm.auto import tqdm

    kept = []
    # Futures rather than pool.map: map cancels its futures when interrupted, and a cancelled future still in
    # the pool makes Python 3.11's pool thread crash with a traceback once the workers are stopped.
    results = map(_run_chunk, chunks) if pool is None else (f.result() for f in [pool.submit(_run_chunk, c) for c in chunks])
    with tqdm(total=sum(len(c.rows) for c in chunks), desc="decode", unit="clip", disable=None, leave=False) as bar:
        for chunk, res in zip(chunks, results, strict=True):
            for row, (dur, skip, unfiltered) in zip(chunk.rows, res, strict=True):
                if skip is None:
                    row.unfiltered = row.unfiltered or unfiltered  # OOV (found before decoding) comes first
                    kept.append((row, dur))
                else:
                    skipped.append((row, *skip))
            bar.update(len(chunk.rows))
    return kept


# -- the whole preparation ----------------------------------------------------------------------------
def prepare(src: str | Path, out: str | Path, config: PrepareConfig | None = None,
            vocab_dir: str | Path | None = None, shard: Shard | str | None = None) -> dict:
    """Prepare `src` into the dataset directory `out`; returns the summary (also in out/summary.json).
    A finished `out` with the same input fingerprint is reused without decoding again. A second run on the
    same `out` while this one holds its lock fails at once (LrlError); SIGTERM cleans up as Ctrl-C does.
    `shard` ("i/n" or a Shard): decode and write only that part of the rows, with the vocabulary of all of
    them; `lrl.data.merge.merge_shards` joins the n parts."""
    config = config or PrepareConfig()
    src, out = Path(src), Path(out)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    with guard.output_lock(out), sigterm_as_interrupt():
        return _prepare(src, out, config, vocab_dir, shard)


def _prepare(src: Path, out: Path, config: PrepareConfig, vocab_dir: str | Path | None, shard: Shard | None) -> dict:
    from lrl.data.vocab import Vocab, build_vocab

    kind, root, rows, held, tables = read_source(src, config)
    unknown = sorted({r.split for r in rows} - set(config.splits))
    if unknown:
        logger.warning("rows of splits %s are not prepared (choose them with --splits)", unknown)
    rows_out = [r for r in rows if r.split in config.splits]
    skipped: list[tuple[_Row, str, str]] = [(r, "not_selected_split", r.split) for r in rows if r.split not in config.splits]
    skipped += [(r, "held_out", r.meta.pop("_held")) for r in held]
    pending = []
    for r in rows_out:
        if "_bad_row" in r.meta:
            skipped.append((r, "bad_row", r.meta.pop("_bad_row")))
            continue
        if "_unsafe_transcript" in r.meta:
            skipped.append((r, "unsafe_path", r.meta.pop("_unsafe_transcript")))
            continue
        reason = _resolve(r, root)
        if reason:
            skipped.append((r, reason, r.path))
        else:
            pending.append(r)

    fp = fingerprint(config, tables, pending, Path(vocab_dir) if vocab_dir else None)
    if shard is not None:
        fp = hashlib.sha256(f"{fp} shard {shard}".encode()).hexdigest()
    reused = reuse_output(out, fp, config.overwrite)
    if reused is not None:
        return reused
    guard.clean_stale_tmp(out)

    if vocab_dir is not None:
        vocab, vocab_source = Vocab.load(vocab_dir), str(vocab_dir)
    else:
        # A clip also in dev/test is kept there (SPLIT_PRIORITY): its train copy must not add characters.
        eval_clips = {r.file for r in pending if r.split != "train"}
        train = [r.sentence for r in pending
                 if r.split == "train" and "_missing_transcript" not in r.meta and r.file not in eval_clips]
        if not train:
            from collections import Counter

            why = Counter(reason for r, reason, _ in skipped if r.split == "train")
            detail = f" (train rows skipped: {', '.join(f'{n} {k}' for k, n in why.most_common())})" if why else ""
            raise LrlError(f"{src}: no usable train rows to build the vocabulary from{detail}; fix the paths, "
                           "pass --vocab DIR, or include train in --splits")
        vocab = build_vocab(train, NormalizerConfig(language=config.language)).vocab
        vocab_source = f"built from {len(train)} train transcripts"

    candidates, seen = [], {}
    normalizer = Normalizer(vocab.normalizer)
    order = sorted(pending, key=lambda r: SPLIT_PRIORITY.index(r.split) if r.split in SPLIT_PRIORITY else len(SPLIT_PRIORITY))
    for r in order:
        missing = r.meta.pop("_missing_transcript", None)
        if missing:
            skipped.append((r, "missing_transcript", missing))
            continue
        votes = _votes(r) if config.check_votes else None
        if votes and votes[1] > 0 and votes[1] >= votes[0]:
            skipped.append((r, "down_voted", f"up {votes[0]}, down {votes[1]}"))
            continue
        try:
            text = normalizer(r.sentence)
        except DigitsInText:  # the vocabulary's normaliser says digits="error": skip, never abort the run
            text = None
        if text is None:
            skipped.append((r, "digits", r.sentence))
            continue
        if not text:
            skipped.append((r, "empty_text", repr(r.sentence)))
            continue
        oov = vocab.oov_chars(text)
        if oov and config.oov == "drop" and _filters(config, r.split):
            skipped.append((r, "oov", " ".join(sorted(oov))))
            continue
        if r.file in seen:  # checked last: a copy with a usable transcript is the one kept
            skipped.append((r, "duplicate", f"same clip as {seen[r.file]}"))
            continue
        seen[r.file] = f"{r.split}/{r.id}"
        if oov and config.oov == "drop":  # an evaluation row: its text keeps the character (an error when scored)
            r.unfiltered = "oov"
        r.text = text
        candidates.append(r)
    index = {id(r): i for i, r in enumerate(pending)}
    candidates.sort(key=lambda r: index[id(r)])  # back to input order
    ident = None
    if shard is not None:  # text filters and duplicates were decided on every row: only decoding is split
        settings = {"format": FORMAT_VERSION, "shards": shard.count, "config": _fingerprinted(config)}
        ident = shards.identity(settings, vocab, [*rows, *held])
        mine = {id(r) for i, r in enumerate([*rows, *held]) if shard.holds(i)}
        logger.info("shard %s: %d of %d rows read are this shard's", shard, len(mine), len(rows) + len(held))
        rows, held = [r for r in rows if id(r) in mine], [r for r in held if id(r) in mine]
        skipped = [s for s in skipped if id(s[0]) in mine]
        candidates = [r for r in candidates if id(r) in mine]
    oov_unk = sum(bool(vocab.oov_chars(r.text)) for r in candidates) if config.oov == "unk" else 0  # kept with [UNK]

    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        kept_rows = _write_dataset(tmp, candidates, rows_out, vocab, vocab_dir, config, skipped, fp)
        summary = _summary(src, kind, config, fp, vocab_source, len(vocab), rows, held, kept_rows, skipped, oov_unk)
        if kind == "common_voice":
            summary["clip_durations"] = _check_clip_durations(src / CLIP_DURATIONS, kept_rows)
        _write_skipped(tmp / SKIPPED_FILE, skipped)
        _log_named(skipped, ("truncated", "non_finite", "bad_row"))
        atomic_write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        if shard is not None:
            shards.write_marker(tmp, shard, ident, fp, oov_unk)
        guard.write_marker(tmp, FORMAT_VERSION)
        guard.publish(tmp, out)
    except BaseException:  # an error or Ctrl-C: no half-written directory stays behind (SIGKILL: the next run)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_dataset(tmp: Path, candidates, rows_out, vocab, vocab_dir, config: PrepareConfig, skipped, fp) -> list:
    """Decode, filter and write every candidate into `tmp` (DatasetDict layout + vocab/); returns kept rows."""
    meta_cols = list(dict.fromkeys(c for r in rows_out for c in r.meta if not c.startswith("_")))
    features = _features(meta_cols)
    chunks = _chunks(candidates, tmp, hf_datasets.arrow_schema(features), meta_cols, config)
    for split in {c.path.parent for c in chunks}:
        split.mkdir()
    import multiprocessing as mp

    before = set(mp.active_children())
    pool = _start_pool(config.num_proc, len(chunks))
    workers = [p for p in mp.active_children() if p not in before]
    saver = None
    try:
        # Vocab.save builds an HF tokenizer (imports transformers + torch: seconds): overlap it with decoding.
        saver = _Background(_save_vocab, vocab, tmp / VOCAB_DIR, Path(vocab_dir) if vocab_dir else None)
        try:
            kept_rows = _run_chunks(chunks, pool, skipped)
        except BrokenProcessPool as e:
            raise LrlError("a decoding worker died (out of memory, or a decoder crash on one clip); "
                           "rerun with --num-proc 1 to see which clip") from e
    except BaseException:  # an error, Ctrl-C or SIGTERM: no worker goes on writing into `tmp`
        guard.stop_workers(workers)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if saver is not None:
            saver.join()
    written = hf_datasets.write_saved_dataset(tmp, [c.path for c in chunks], config.splits, features, fp)
    for s in config.splits:
        if s not in written and any(r.split == s for r in rows_out):
            logger.warning("split %s: no row kept, so the dataset has no %s split (see %s)", s, s, SKIPPED_FILE)
    return kept_rows


def _log_named(skipped: list, reasons: tuple[str, ...]) -> None:
    """Name the clips skipped for `reasons` (faults in the corpus a user will want to see) in the log."""
    for reason in reasons:
        hits = [(r, detail) for r, why, detail in skipped if why == reason]
        for r, detail in hits[:LOG_NAMED]:
            logger.warning("%s: %s/%s (%s): %s", reason, r.split, r.id, r.path, detail)
        if len(hits) > LOG_NAMED:
            logger.warning("%s: %d more clips, listed in %s", reason, len(hits) - LOG_NAMED, SKIPPED_FILE)


def _check_clip_durations(path: Path, kept: list) -> dict | None:
    """Compare decoded durations with Common Voice's clip_durations.tsv (a cross-check of the decoder;
    clips decoding much shorter were already skipped as `truncated`)."""
    ms = _clip_durations(path)
    if not ms:
        return None
    pairs = [(d, ms[Path(r.path).name]) for r, d in kept if Path(r.path).name in ms]
    diffs = [abs(d - want) for d, want in pairs]
    bad = sum(abs(d - want) > max(CLIP_DURATION_TOLERANCE, 0.05 * want) for d, want in pairs)
    if bad:
        logger.warning("%d of %d clips decode to a duration that differs from %s by > 5%%", bad, len(diffs), path.name)
    return {"compared": len(diffs), "mismatched": bad, "max_abs_diff_s": round(max(diffs, default=0.0), 4)}


class _Background:
    """Runs fn(*args) in a thread; join() re-raises its exception."""

    def __init__(self, fn, *args):
        import threading

        self._error: BaseException | None = None

        def run():
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised in join()
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _save_vocab(vocab, dst: Path, src: Path | None) -> None:
    if src is not None:  # a given vocabulary is copied as it is (tokenizer files, report, normaliser)
        shutil.copytree(src, dst)
    else:
        vocab.save(dst)


# -- output files -------------------------------------------------------------------------------------
def reuse_output(out: Path, fp: str, overwrite: bool) -> dict | None:
    """The summary of `out` when it was written from inputs with fingerprint `fp` (reuse it); None when `out` is
    absent or may be replaced; LrlError when it holds other work (or other inputs, and not `overwrite`)."""
    if not out.exists():
        return None
    summary_file = out / SUMMARY_FILE
    if not summary_file.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise LrlError(f"{out} exists and is not a dataset made by `lrl data prepare` (no {SUMMARY_FILE}); "
                       "choose another --out or remove it")
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        summary = None
    if not isinstance(summary, dict):
        raise LrlError(f"{out} holds a {SUMMARY_FILE} that is not the JSON object `lrl data prepare` writes, so "
                       "it is not a prepared dataset; choose another --out, or remove the folder yourself")
    if summary.get("fingerprint") == fp and (out / "dataset_dict.json").is_file():
        logger.info("%s was prepared from identical inputs (fingerprint %s): reused, nothing decoded", out, fp[:12])
        return {**summary, "reused": True}
    if not overwrite:
        raise LrlError(f"{out} was prepared from other inputs or options (fingerprint {summary.get('fingerprint', '?')[:12]}, "
                       f"now {fp[:12]}); pass --overwrite to replace it, or choose another --out")
    if not guard.is_marked(out):
        raise LrlError(f"{out} holds a {SUMMARY_FILE} but no {guard.PREPARED_MARKER} marker, so it is not a dataset "
                       "that `lrl data prepare` wrote (or one written before markers existed); --overwrite replaces "
                       "only those. Choose another --out, or remove the folder yourself")
    return None


def _clean_field(s: str) -> str:
    return " ".join(str(s).split())


def _write_skipped(path: Path, skipped: list) -> None:
    lines = ["split\tid\tpath\treason\tdetail"]
    lines += ["\t".join(_clean_field(x) for x in (r.split, r.id, r.path, reason, detail)) for r, reason, detail in skipped]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _summary(src, kind, config, fp, vocab_source, vocab_size, rows, held, kept, skipped, oov_unk) -> dict:
    read = Counter(r.split for r in [*rows, *held])
    splits = {}
    for split in [*config.splits, *sorted(set(read) - set(config.splits))]:
        k = [(r, d) for r, d in kept if r.split == split]
        reasons = Counter(reason for r, reason, _ in skipped if r.split == split)
        if split not in read:
            continue
        if len(k) + sum(reasons.values()) != read[split]:  # the "nothing silently lost" invariant
            raise RuntimeError(f"{split}: {len(k)} kept + {sum(reasons.values())} skipped != {read[split]} read")
        unfiltered = Counter(r.unfiltered for r, _ in k if r.unfiltered)
        splits[split] = {
            "read": read[split], "kept": len(k), "skipped": dict(sorted(reasons.items())),
            "kept_unfiltered": dict(sorted(unfiltered.items())),  # kept rows the train filters would drop, per reason
            **speaker_stats((r.speaker, d) for r, d in k),
        }
    speakers = {s: {r.speaker for r, _ in kept if r.split == s and r.speaker} for s in splits}
    warnings = summary_warnings(splits, speakers, oov_unk)
    return {
        "format": FORMAT_VERSION, "source": str(src), "source_kind": kind, "fingerprint": fp,
        "config": config.to_dict(), "vocab": {"source": vocab_source, "size": vocab_size},
        "sample_rate": SAMPLE_RATE, "splits": splits,
        "total": {"read": sum(read.values()), "kept": len(kept), "skipped": len(skipped)},
        "warnings": warnings,
    }


def speaker_stats(pairs) -> dict:
    """A split's hours, speakers and five largest speakers' shares of the audio, from (speaker, seconds) pairs."""
    secs = Counter()
    for speaker, d in pairs:
        secs[speaker] += d
    total = sum(secs.values())
    return {"hours": round(total / 3600, 6), "speakers": len(secs),
            "top_speakers": [[s[:16], round(t / total, 4)] for s, t in secs.most_common(5)] if total else []}


def summary_warnings(splits: dict, speakers: dict[str, set], oov_unk: int) -> list[str]:
    """The warnings of a summary (logged here): speakers shared by train and dev/test, a split dominated by one
    speaker, kept transcripts mapped to [UNK]; kept_unfiltered counts are logged as information."""
    warnings = []
    for other in ("dev", "test"):
        both = speakers.get("train", set()) & speakers.get(other, set())
        if both:
            warnings.append(f"{len(both)} speaker(s) appear in both train and {other}: "
                            f"{other} scores will be optimistic for unseen speakers")
    for s, info in splits.items():
        if info["top_speakers"] and info["top_speakers"][0][1] > 0.5 and info["speakers"] > 1:
            warnings.append(f"{s}: one speaker holds {info['top_speakers'][0][1]:.0%} of the audio")
    if oov_unk:
        warnings.append(f"{oov_unk} kept transcripts hold characters outside the vocabulary (mapped to [UNK])")
    for w in warnings:
        logger.warning("%s", w)
    for s, info in splits.items():
        if info["kept_unfiltered"]:
            logger.info("%s: kept %s that training's filters would drop (scored as they are; --filter-eval drops them)",
                        s, _counts(info["kept_unfiltered"]))
    return warnings


def format_summary(summary: dict) -> list[str]:
    """Lines for the terminal: per split, kept + skipped per reason = read, hours and speakers."""
    lines = []
    for split, s in summary["splits"].items():
        why = _counts(s["skipped"]) or "none"
        unfiltered = s.get("kept_unfiltered")
        lines.append(f"{split}: {s['kept']} kept + {sum(s['skipped'].values())} skipped ({why}) = {s['read']} read; "
                     f"{s['hours']:.3f} h, {s['speakers']} speaker(s)"
                     + (f"; kept unfiltered (for scoring): {_counts(unfiltered)}" if unfiltered else ""))
    return lines


def _counts(by_reason: dict) -> str:
    return ", ".join(f"{n} {r}" for r, n in by_reason.items())


def split_record(directory: str | Path, split: str) -> dict | None:
    """What `prepare` recorded for `split` of the dataset in `directory` (read, kept, skipped and
    kept_unfiltered per reason), or None for a dataset written by other means (no summary.json)."""
    path = Path(directory) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("splits", {}).get(split)


def load_prepared(directory: str | Path):
    """(DatasetDict, Vocab) of a directory written by `prepare`."""
    import datasets

    from lrl.data.vocab import Vocab

    directory = Path(directory)
    if not (directory / "dataset_dict.json").is_file():
        raise LrlError(f"{directory} is not a prepared dataset (no dataset_dict.json): run `lrl data prepare SRC --out {directory}`")
    return datasets.load_from_disk(str(directory)), Vocab.load(directory / VOCAB_DIR)
