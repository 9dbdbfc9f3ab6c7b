"""Installation checks behind `lrl doctor`: package versions, external tools, KenLM binaries."""

from __future__ import annotations

import importlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SETUP_FIX = "run `make setup` (or scripts/setup.sh) from the lrl checkout"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str = ""


def find_tool(name: str) -> str | None:
    """A tool on PATH, or beside this interpreter (the venv's bin/, where setup puts lmplz)."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    return shutil.which(name)


def _package(name: str, required: bool = True, fix: str = SETUP_FIX) -> Check:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - an import can fail in many ways; all mean "broken"
        return Check(name, False, f"import failed: {type(e).__name__}: {e}", required, fix)
    return Check(name, True, getattr(mod, "__version__", "importable"), required)


def _tool(name: str, required: bool, fix: str) -> Check:
    path = find_tool(name)
    return Check(name, path is not None, path or "not found", required, "" if path else fix)


def run_checks() -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), sys.version.split()[0], True, "use Python >= 3.10")]
    for pkg in ("torch", "transformers", "datasets", "accelerate", "numpy", "soundfile", "soxr", "jiwer",
                "audiomentations", "pyctcdecode", "kenlm"):
        checks.append(_package(pkg))
    try:
        import torch

        dev = f"cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu only"
        checks.append(Check("accelerator", True, f"{dev}, {torch.get_num_threads()} threads", required=False))
    except Exception:  # noqa: BLE001
        pass
    checks.append(_tool("ffmpeg", True, "apt-get install ffmpeg (decodes audio soundfile cannot)"))
    checks.append(_tool("espeak-ng", False, "apt-get install espeak-ng (needed only by `lrl demo`)"))
    checks.append(_tool("lmplz", True, f"{SETUP_FIX}; it builds KenLM's lmplz from the kenlm sdist"))
    checks.append(_tool("build_binary", True, f"{SETUP_FIX}; it builds KenLM's build_binary"))
    return checks
