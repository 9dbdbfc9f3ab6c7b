"""lrl: a workbench for speech recognition in low-resource languages.

The public surface: one entry point per stage and its config. They load on first use, so `import lrl`
imports no torch (the stages import it when they run). Layers and modules: ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it. `train` and `evaluate` are not here: those names are lrl's subpackages
# (lrl.train.trainer.train, lrl.evaluate.scoring.evaluate).
_EXPORTS = {
    "Vocab": "lrl.data.vocab",
    "build_vocab": "lrl.data.vocab",
    "PrepareConfig": "lrl.data.prepare",
    "prepare": "lrl.data.prepare",
    "TrainConfig": "lrl.train.config",
    "LMBuildConfig": "lrl.decode.lm",
    "build_lm": "lrl.decode.lm",
    "CTCDecoder": "lrl.decode.decoder",
    "DecoderConfig": "lrl.decode.decoder",
    "EvaluateConfig": "lrl.evaluate.scoring",
    "TranscribeConfig": "lrl.evaluate.transcribe",
    "transcribe": "lrl.evaluate.transcribe",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
