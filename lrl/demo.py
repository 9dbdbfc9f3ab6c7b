"""`lrl demo`: the whole path on a corpus lrl makes itself (espeak-ng Swahili, several voices, noise):
vocab -> data -> augment preview -> (short pretrain) -> train from the shipped cross-lingual start -> LM ->
tune -> evaluate, each stage through the same library call as its CLI command, ending in a results table
and the commands to rerun a stage."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lrl.core.io import atomic_write_text

logger = logging.getLogger(__name__)

DemoStart = Literal["xl-tiny", "scratch"]  # the shipped cross-lingual start, or a random tiny model

# torch threads for the demo's training: 2 (the cores of the machines lrl is built on), fewer only when the
# process may not use 2 CPUs. With OMP_WAIT_POLICY=PASSIVE (set by the CLI) 2 threads still share the cores
# fairly when other work runs (bench/train.py --oversub).
DEMO_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo-out"  # everything goes here
    n_train: int = 600  # synthesised training utterances (~3 s each)
    n_dev: int = 60  # dev utterances (alpha/beta tuning, checkpoint choice)
    n_test: int = 80  # test utterances (the reported WER/CER)
    start: DemoStart = "xl-tiny"  # the shipped cross-lingual start (Swahili not among its languages), or "scratch"
    pretrain_steps: int = 0  # self-supervised updates on the training audio before fine-tuning (0 = skip)
    train_steps: int = 1500  # CTC fine-tuning updates (~16 s of audio each; ~0.2 s each on 2 idle cores); a fixed
    # count, not a time budget, so that a busy machine gets the same model, only later
    lm_order: int = 3  # KenLM n-gram order
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("n_train", "n_dev", "n_test", "train_steps", "lm_order"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.start not in get_args(DemoStart):
            raise ValueError(f"start must be one of {list(get_args(DemoStart))}, got {self.start!r}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {self.pretrain_steps}")


@dataclass
class DemoResult:
    out: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)
    eval_table: str = ""
    greedy: dict = field(default_factory=dict)
    lm: dict = field(default_factory=dict)
    decoder: dict = field(default_factory=dict)
    n_test: int = 0


def run_demo(config: DemoConfig | None = None, say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage; `say` receives one line per stage start/end (the CLI passes typer.echo)."""
    from lrl.augment.preview import preview
    from lrl.augment.specaugment import SpecAugmentConfig
    from lrl.augment.wave import WaveAugmentConfig
    from lrl.data import cards as card
    from lrl.data import prepare as data
    from lrl.data import synth
    from lrl.decode import lm
    from lrl.evaluate import scoring as evaluate
    from lrl.evaluate import tuning
    from lrl.report import REPORT_FILE, write_report
    from lrl.train import pretrain
    from lrl.train import trainer as train

    config = config or DemoConfig()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=out)
    stages = ["corpus", "data", "augment", "pretrain", "train", "lm", "tune", "evaluate"]

    @contextmanager
    def stage(name: str):
        i = stages.index(name) + 1
        say(f"[{i}/{len(stages)}] {name} ...")
        t0 = time.perf_counter()
        yield
        res.stage_seconds[name] = time.perf_counter() - t0
        say(f"[{i}/{len(stages)}] {name} done in {res.stage_seconds[name]:.0f} s")

    corpus, data_dir = out / "corpus", out / "data"
    ssl_dir, model_dir, lm_dir = out / f"pretrained-{config.start}", out / "model", out / "lm"

    with stage("corpus"):
        if not (corpus / "test.tsv").is_file():
            synth.make_swahili_demo_corpus(corpus, config.n_train, config.n_dev, config.n_test, seed=config.seed)
        res.artefacts["corpus (Common Voice layout, espeak-ng)"] = str(corpus)

    with stage("data"):
        summary = data.prepare(
            corpus, data_dir, data.PrepareConfig(language="sw", licence="cc0-1.0", num_proc=2),
        )
        res.artefacts["dataset (datasets, 16 kHz) + vocab"] = str(data_dir)
        card.write_card(data_dir, out / "data_cards", name="sw-synth", language="sw", licence="cc0-1.0")
        res.artefacts["data card"] = str(out / "data_cards" / "sw-synth.md")
        say("      " + "; ".join(data.format_summary(summary)[:3]))

    with stage("augment"):
        clip = sorted((corpus / "clips").glob("*_train_*.wav"))[0]
        preview(
            clip, out / "augment_preview", WaveAugmentConfig.preset("strong"), n=2, seed=config.seed,
            specaugment=SpecAugmentConfig.preset("hf-default"),
        )
        res.artefacts["augmentation preview (wav + png)"] = str(out / "augment_preview")

    from lrl.models.checkpoints import resolve_checkpoint

    # the start: the shipped cross-lingual checkpoint (CTC-trained on espeak-ng speech in six other
    # languages; its head rows for shared characters are copied), or a random tiny model
    head_from = ""
    if config.start == "xl-tiny":
        start = head_from = "xl-tiny"  # by name: every loader resolves it, and the saved config stays portable
        recipe = "small-start"  # lrl.train.recipes (what recipe="auto" picks for it too)
        res.artefacts["starting checkpoint (cross-lingual, shipped)"] = resolve_checkpoint(start)
    else:
        start, recipe = str(out / "init"), "scratch"
        if not (out / "init" / "model.safetensors").is_file():
            from lrl.models.checkpoints import init_tiny

            init_tiny(out / "init", "small", seed=config.seed)
    with stage("pretrain"):
        if config.pretrain_steps > 0:
            if not (ssl_dir / "model.safetensors").is_file():
                pcfg = pretrain.PretrainConfig(
                    max_steps=config.pretrain_steps, learning_rate=5e-4, warmup_steps=max(1, config.pretrain_steps // 10),
                    gumbel_min_at_step=config.pretrain_steps, seed=config.seed, max_seconds=4.0, min_seconds=1.0,
                    save_every=0,
                )
                pretrain.run_pretraining([data_dir], ssl_dir, pcfg, model=start)
            start = str(ssl_dir)
            res.artefacts["self-supervised continuation (Wav2Vec2ForPreTraining)"] = str(ssl_dir)
        else:
            say("      skipped (--pretrain-steps N continues self-supervised pretraining on the training audio first)")

    with stage("train"):
        run = {
            "output_dir": str(model_dir),
            "seed": config.seed,
            "recipe": recipe,
            # a fixed thread count: the automatic policy takes fewer threads on a busy machine, which changes
            # float summation order and so the trained model; the demo's numbers must not depend on load
            "threads": DEMO_THREADS,
            "data": {"path": str(data_dir), "augment": "light"},
            "model": {"checkpoint": start, "init_head_from": head_from},
            # a fixed number of updates, no wall-clock cap: a busy machine takes longer but gets the same model
            "optim": {"max_steps": config.train_steps},
            "eval": {"eval_steps": max(50, config.train_steps // 5), "logging_steps": 10, "save_total_limit": 1},
        }
        tcfg = train.TrainConfig.from_dict(run)
        tr = train.train(tcfg)
        res.artefacts["acoustic model (HF Wav2Vec2ForCTC + processor)"] = str(model_dir)

    with stage("lm"):
        lm.build_lm([corpus / "lm.txt"], data_dir / "vocab", lm_dir, lm.LMBuildConfig(order=config.lm_order))
        res.artefacts["KenLM (pyctcdecode layout)"] = str(lm_dir)

    with stage("tune"):
        # a coarse grid: the demo's budget is minutes; `lrl lm tune` defaults search wider and refine
        grid = tuning.TuneConfig(alphas=(0.0, 0.5, 1.0, 1.5, 2.0), betas=(-1.0, 0.0, 1.0, 2.0), refine=False,
                                 grid_beam=16, beam_widths=(16, 32))
        tuned, _ = tuning.tune(model_dir, data_dir, lm=lm_dir, split="dev", config=grid)
        res.decoder = {"alpha": tuned.best.alpha, "beta": tuned.best.beta, "beam_width": tuned.best.beam_width}
        res.artefacts["alpha/beta heatmap"] = str(model_dir / "tune-dev")

    with stage("evaluate"):
        ev = evaluate.evaluate(model_dir, data_dir, evaluate.EvaluateConfig(split="test"))
        res.eval_table = ev.table()
        res.n_test = ev.n
        res.greedy = {"wer": ev.greedy.wer, "cer": ev.greedy.cer}
        res.lm = {"wer": ev.lm.wer, "cer": ev.lm.cer} if ev.lm else {}
        res.artefacts["per-utterance results"] = str(ev.out_dir)
        write_report([ev.out_dir], out / REPORT_FILE)
        res.artefacts["error-analysis page (open in a browser)"] = str(out / REPORT_FILE)

    atomic_write_text(out / "demo_summary.json", json.dumps({
        "stage_seconds": res.stage_seconds, "greedy": res.greedy, "lm": res.lm, "decoder": res.decoder,
        "train_steps": tr.global_step, "artefacts": res.artefacts,
    }, indent=2) + "\n")
    return res


def rerun_commands(res: DemoResult) -> list[str]:
    o = res.out
    return [
        "lrl vocab build YOUR_CV/train.tsv --out runs/vocab",
        f"lrl data prepare YOUR_CV --out runs/data --language xx            # was: {o}/data",
        "lrl augment preview CLIP.mp3 --preset strong --n 4 --out runs/aug",
        "lrl pretrain runs/data --model XLSR_DIR --out runs/ssl --steps 2000   # optional",
        "lrl train run --data runs/data --checkpoint XLSR_OR_MMS_DIR --out runs/model   # or runs/ssl",
        "lrl train run --data runs/data --checkpoint xl-tiny --init-head-from xl-tiny --out runs/model   # the demo's start",
        "lrl lm build YOUR_TEXT.txt --vocab runs/data/vocab --order 3 --out runs/lm",
        "lrl lm tune runs/model runs/data --lm runs/lm --split dev",
        "lrl evaluate runs/model runs/data --split test",
        "lrl transcribe runs/model AUDIO.wav --json",
    ]
