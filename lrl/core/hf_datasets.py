"""The one place lrl writes or sniffs the Hugging Face `datasets` on-disk layout by hand: what
`DatasetDict.save_to_disk` writes and `datasets.load_from_disk` reads (per split `data-0000i-of-0000n.arrow`,
`state.json` with datasets' private `_data_files`/`_fingerprint`/`_format_*`/`_split` keys,
`dataset_info.json`; `dataset_dict.json` on top), and the Arrow schema metadata `datasets` keeps its
features in.

Why not the public API: `lrl data prepare` writes every split as Arrow shards straight from its decoding
workers. The public route to a saved DatasetDict, `concatenate_datasets([Dataset.from_file(shard), ...])`
+ `DatasetDict.save_to_disk`, rewrites every shard (all the audio, float32) and imports `datasets`. On
yo-cv/train (527 clips, two runs of `bench/prepare.py --repeats 1`, whose `lrl-public` row re-measures)
a whole `prepare` ending that way ran at 0.53-0.75x the wall speed, 0.68-0.77x the clips per CPU-second
and ~3x the peak memory (621-657 vs 214 MB) of renaming the shards in place and writing the JSON files here. Checked against datasets 5.2.0 (the installed version;
`Dataset.save_to_disk`/`load_from_disk` in `datasets/arrow_dataset.py`); tests/test_hf_datasets.py
loads what this writes with `datasets.load_from_disk`, so a layout change fails there first.
No `datasets` import here: preparing data stays free of its import cost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lrl.core.io import atomic_write_text

DATASET_DICT_FILE = "dataset_dict.json"  # the split list of a saved DatasetDict (datasets.config.DATASETDICT_JSON_FILENAME)
STATE_FILE = "state.json"  # a saved Dataset's shard list and state (datasets.config.DATASET_STATE_JSON_FILENAME)
INFO_FILE = "dataset_info.json"  # a saved Dataset's features and card fields (datasets.config.DATASET_INFO_FILENAME)


def save_dataset_dict(dd, directory: str | Path) -> None:
    """`DatasetDict.save_to_disk`, one shard for an empty split: datasets 5.2 saves an empty split with no
    shard at all, and `load_from_disk` then fails on it (IndexError in `concat_tables`), while one empty
    shard loads as 0 rows (tests/test_hf_datasets.py checks both). Public API only."""
    dd.save_to_disk(str(directory), num_shards={k: 1 for k, v in dd.items() if len(v) == 0} or None)


def arrow_schema(features: dict):
    """The Arrow schema `datasets.Features.from_dict(features).arrow_schema` gives: the column types plus the
    `huggingface` metadata that `Dataset.from_file`/`load_from_disk` read the features back from. `features`
    is a `Features.to_dict()` of `Value` (string, float32, float64) and `List` of `Value` columns."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "float32": pa.float32()}
    fields = [pa.field(n, pa.list_(types[f["feature"]["dtype"]]) if f["_type"] == "List" else types[f["dtype"]])
              for n, f in features.items()]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def write_saved_dataset(directory: Path, shards: list[Path], splits: tuple[str, ...], features: dict,
                        fingerprint: str) -> list[str]:
    """Make `directory` a saved DatasetDict from Arrow stream files already in place: `shards` are
    `directory/<split>/<any name>.arrow` with the `arrow_schema(features)` schema, in row order. Renames them
    to `data-0000i-of-0000n.arrow` and writes the JSON files `save_to_disk` writes beside them. A split with
    no shard gets no folder (its empty folder is removed). `fingerprint` (hex) seeds each split's datasets
    fingerprint, so the same input gives the same fingerprints. Returns the splits written, in `splits` order."""
    directory = Path(directory)
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    written = []
    for split in splits:
        parts = [Path(p) for p in shards if Path(p).parent.name == split and Path(p).is_file()]
        if not parts:
            shutil.rmtree(directory / split, ignore_errors=True)
            continue
        files = []
        for i, p in enumerate(parts):
            name = f"data-{i:05d}-of-{len(parts):05d}.arrow"
            p.rename(p.parent / name)
            files.append({"filename": name})
        state = {"_data_files": files, "_fingerprint": f"{fingerprint[:14]}{len(written):02d}", "_format_columns": None,
                 "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}
        atomic_write_text(directory / split / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))
        atomic_write_text(directory / split / INFO_FILE, json.dumps(dict(sorted(info.items())), indent=2))
        written.append(split)
    atomic_write_text(directory / DATASET_DICT_FILE, json.dumps({"splits": written}))
    return written


def is_saved_dataset(path: str | Path) -> bool:
    """Whether `path` is a folder `datasets.load_from_disk` reads: a saved DatasetDict or a saved Dataset."""
    path = Path(path)
    return path.is_dir() and ((path / DATASET_DICT_FILE).is_file() or (path / STATE_FILE).is_file())
