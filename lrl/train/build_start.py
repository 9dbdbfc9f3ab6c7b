"""Starting checkpoints: the tiny cross-lingual start lrl ships (`xl-tiny`), the one call that rebuilds it
the way XLS-R/MMS are built but small (CTC on espeak-ng speech in several languages), and how a
`--checkpoint` name resolves to a directory."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lrl.core.io import atomic_write_text

logger = logging.getLogger(__name__)

# Files of a trained output directory a start needs (model, processor, normaliser) or documents itself with.
_KEEP = ("config.json", "vocab.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
         "normalizer.json", "special_tokens_map.json", "train_config.yaml", "metrics.csv", "training_curves.png")


@dataclass(frozen=True)
class StartConfig:
    """How a cross-lingual start is built: which languages speak, how much, and how long it trains."""

    texts: dict[str, str] = field(default_factory=dict)  # language -> sentence file (one per line) or "grammar" (sw)
    n_per_language: int = 300  # synthesised training utterances per language (~3-5 s each)
    n_dev_per_language: int = 10  # dev utterances per language (checkpoint choice, curves)
    minutes: float = 10.0  # wall-clock budget of the CTC training (the LR schedule is fitted to it)
    size: str = "small"  # lrl.models.checkpoints.tiny_config size of the randomly initialised model
    seed: int = 0
    half: bool = True  # store the weights in fp16 (half the size; loaded back as fp32)

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError("texts must name at least one language: {language: sentence file or 'grammar'}")
        for f in ("n_per_language", "n_dev_per_language"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")


def build_crosslingual_start(out: str | Path, config: StartConfig, work: str | Path | None = None) -> Path:
    """Synthesise espeak-ng speech in `config.texts`' languages (several voices, rates, pitches, noise),
    train a fresh tiny XLS-R-shaped model on it with CTC for `config.minutes`, and write the model,
    processor and a provenance card to `out`. Intermediate files go to `work` (default: out/../NAME-work),
    which is reused when it already holds the corpus or dataset. Returns `out`."""
    from lrl.data import prepare as data
    from lrl.data import synth
    from lrl.models.checkpoints import init_tiny
    from lrl.train.config import TrainConfig
    from lrl.train.trainer import train

    out = Path(out)
    work = Path(work) if work else out.parent / f"{out.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus, ds_dir, init, run_dir = work / "corpus", work / "data", work / "init", work / "train"
    if not (corpus / "manifest.tsv").is_file():
        synth.make_multilingual_corpus(corpus, dict(config.texts), config.n_per_language, config.n_dev_per_language,
                                       seed=config.seed)
    if not (ds_dir / "summary.json").is_file():
        data.prepare(corpus / "manifest.tsv", ds_dir, data.PrepareConfig(splits=("train", "dev"), num_proc=2))
    t_corpus = time.perf_counter() - t0
    if not (init / "model.safetensors").is_file():
        init_tiny(init, config.size, seed=config.seed)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a build trains from scratch every time: the budget is part of the recipe
    run = {
        "output_dir": str(run_dir), "seed": config.seed, "max_minutes": config.minutes,
        "data": {"path": str(ds_dir), "test_split": ""},
        "eval": {"eval_steps": 100, "logging_steps": 20, "save_total_limit": 1},
        "recipe": "scratch",  # lrl.train.recipes: a random start
        "model": {"checkpoint": str(init)},
        "optim": {"max_steps": 100_000},  # the wall-clock budget ends the run
    }
    result = train(TrainConfig.from_dict(run))
    _export(run_dir, out, config, result, t_corpus, time.perf_counter() - t0)
    return out


def _export(run_dir: Path, out: Path, config: StartConfig, result, t_corpus: float, t_total: float) -> None:
    """Copy what a start needs from a training output dir; weights in fp16 when `config.half`."""
    import torch
    from safetensors.torch import load_file, save_file

    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in _KEEP:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    tensors = load_file(str(run_dir / "model.safetensors"))
    if config.half:
        tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(v.numel() for v in tensors.values())
    m = result.metrics
    card = [
        "# xl-tiny: a tiny cross-lingual Wav2Vec2 start built by lrl",
        "",
        f"A {n_params / 1e6:.1f}M-parameter Wav2Vec2ForCTC with the XLS-R layout (`lrl.models.checkpoints.tiny_config({config.size!r})`), "
        "trained from random weights with CTC on espeak-ng speech (several voices, speaking rates, pitches, added noise) "
        f"in {len(config.texts)} languages: {', '.join(sorted(config.texts))}.",
        "It is a starting checkpoint, not a recogniser: fine-tune it on your language with "
        "`lrl train run --checkpoint xl-tiny --init-head-from xl-tiny ...` (the head rows of shared characters are copied).",
        "",
        f"- utterances per language: {config.n_per_language} train + {config.n_dev_per_language} dev",
        f"- CTC training: {result.global_step} updates in a {config.minutes:g}-minute budget; "
        f"dev CER at the end {m.get('eval_cer', float('nan')):.3f}",
        f"- build time: {t_total / 60:.1f} min (corpus + data {t_corpus / 60:.1f} min)",
        f"- weights stored as {'fp16 (loaded as fp32)' if config.half else 'fp32'}",
        "- rebuild: `make xl-start` (see the Makefile for the languages' sentence files)",
    ]
    atomic_write_text(tmp / "README.md", "\n".join(card) + "\n")
    atomic_write_text(tmp / "start.json", json.dumps({
        "texts": {k: str(v) for k, v in config.texts.items()}, "n_per_language": config.n_per_language,
        "n_dev_per_language": config.n_dev_per_language, "minutes": config.minutes, "size": config.size,
        "seed": config.seed, "updates": result.global_step, "dev_cer": m.get("eval_cer"),
        "build_minutes": round(t_total / 60, 2),
    }, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("wrote the cross-lingual start to %s (%d updates, %.1f min)", out, result.global_step, t_total / 60)
