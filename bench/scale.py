"""Real model scale on this CPU: random-init XLS-R 300M and MMS-1b-all shapes (safetensors, as the hub ships them)
through `lrl train run` on yo-cv (layer-wise decay + progressive unfreezing, gradient checkpointing off/on: s/update,
peak RSS, trainable parameters per phase; the peak against what `lrl train find-batch` predicts) and MMS adapter mode
(adapters + head; adapter.<lang>.safetensors loaded back with load_adapter gives the same outputs). Each cell runs in
its own process (its own peak RSS), one at a time; a cell whose memory need passes what `free` shows is skipped.

    python bench/scale.py [--cells build-300m,train-300m-gc,...] [--steps 3]   # table into RESULTS.md (scale)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT), *(q for q in sys.path if Path(q or ".").resolve() != ROOT / "bench")]  # a bench/NAME.py never shadows a stdlib module

WORK = ROOT / "bench" / "_work" / "scale"
YO_CV = ROOT.parent / "shared" / "data" / "yo-cv"
CONV = dict(conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_conv_pos_embeddings=128,
            num_conv_pos_embedding_groups=16, codevector_dim=768, proj_codevector_dim=768)
SHAPES = {  # published configs: facebook/wav2vec2-xls-r-300m, facebook/mms-1b-all
    "300m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, **CONV),
    "1b": dict(hidden_size=1280, num_hidden_layers=48, num_attention_heads=16, intermediate_size=5120,
               adapter_attn_dim=16, **{**CONV, "codevector_dim": 1024, "proj_codevector_dim": 1024}),
}
# GiB a cell needs (weights + gradients + AdamW in fp32 + activations of an 8 s batch, measured or estimated):
NEED_GB = {"build-300m": 4, "build-1b": 10, "train-300m": 8, "train-300m-gc": 7, "adapter-300m": 5,
           "train-1b": 20, "adapter-1b": 10}
CELLS = list(NEED_GB)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def build(shape: str) -> dict:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    from lrl.core.audio import default_feature_extractor

    out = WORK / f"xlsr-{shape}"
    t0 = time.perf_counter()
    if not (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").is_file():
        torch.manual_seed(0)
        model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**SHAPES[shape]))
        model.save_pretrained(out)
        default_feature_extractor().save_pretrained(out)
        n = sum(p.numel() for p in model.parameters())
    else:
        n = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**30
    return dict(params_m=round(n / 1e6, 1) if n > 1000 else None, safetensors_gb=round(size, 2),
                seconds=round(time.perf_counter() - t0, 1))


def prepared() -> Path:
    from lrl.data.prepare import PrepareConfig, prepare

    data = WORK / "yo"
    if not (data / "dataset_dict.json").is_file():
        prepare(YO_CV, data, PrepareConfig(max_duration=15.0, num_proc=2))
    return data


def train_cell(shape: str, gc: bool, adapter: bool, steps: int, max_seconds: float) -> dict:
    import csv

    import torch

    from lrl.train import trainer as trainer_mod
    from lrl.train.batching import find_max_seconds
    from lrl.train.config import TrainConfig

    history: list = []

    class Recording(trainer_mod.FreezeScheduleCallback):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            history.append(self.history)

    trainer_mod.FreezeScheduleCallback = Recording
    ckpt = WORK / f"xlsr-{shape}"
    out = WORK / f"run-{shape}-{'adapter' if adapter else 'gc' if gc else 'nogc'}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    over = {"output_dir": str(out), "data.path": str(prepared()), "model.checkpoint": str(ckpt),
            "optim.max_steps": steps, "optim.lr": 1e-4, "optim.warmup_steps": 0, "optim.layer_decay": 0.9,
            "eval.eval_steps": steps, "eval.logging_steps": 1, "eval.save_total_limit": 1,
            "batching.max_seconds": max_seconds, "data.eval_split": "", "data.test_split": "",
            "data.cache_features": "false", "model.gradient_checkpointing": str(gc).lower()}
    if adapter:
        over["model.adapter_lang"] = "yor"
    else:  # progressive unfreezing: the Transformer frozen for 1 update, then 8 layers more each update
        over.update({"freeze.freeze_encoder_steps": 1, "freeze.unfreeze_layers": 8, "freeze.unfreeze_every": 1})
    t0 = time.perf_counter()
    result = trainer_mod.train(TrainConfig().with_overrides(over))
    total = time.perf_counter() - t0
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r.get("elapsed_s")]
    el = sorted({float(r["elapsed_s"]) for r in rows})
    s_update = (el[-1] - el[0]) / (len(el) - 1) if len(el) > 1 else float("nan")
    res = dict(updates=result.global_step, s_per_update=round(s_update, 1), run_s=round(total, 1),
               peak_rss_gb=round(_peak_gb(), 2),
               trainable_m_by_step=[(s, round(t / 1e6, 1)) for s, t, _ in (history[0] if history else [])])
    if adapter:
        from transformers import Wav2Vec2ForCTC

        model = Wav2Vec2ForCTC.from_pretrained(out).eval()
        x = torch.randn(1, 32000)
        with torch.no_grad():
            before = model(x).logits
            for v in model._get_adapters().values():
                v.zero_()
            model.load_adapter("yor")
            after = model(x).logits
        res["load_adapter_same_outputs"] = bool(torch.equal(before, after))
        res["adapter_file_mb"] = round((out / "adapter.yor.safetensors").stat().st_size / 2**20, 1)
    else:  # what find-batch predicts for this batch size, measured on the loaded model
        from lrl.models.checkpoints import load_for_ctc

        model = load_for_ctc(ckpt, 64, 0)
        model.freeze_feature_encoder()
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        est = find_max_seconds(model, budget_bytes=64 * 2**30, clip_seconds=4.0)
        res["find_batch_predicted_gb"] = round((est.fixed_bytes + est.bytes_per_second * max_seconds) / 2**30, 2)
    return res


def run_cell(name: str, steps: int, max_seconds: float) -> dict:
    kind, shape, *gc = name.split("-")  # build-300m, train-300m-gc, adapter-1b
    if kind == "build":
        return build(shape)
    return train_cell(shape, gc=bool(gc), adapter=kind == "adapter", steps=steps, max_seconds=max_seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {CELLS}")
    p.add_argument("--steps", type=int, default=3, help="updates per training cell")
    p.add_argument("--max-seconds", type=float, default=8.0, help="padded audio per batch")
    p.add_argument("--timeout", type=float, default=900, help="seconds per cell")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one cell in this process, print its JSON
    a = p.parse_args(argv)
    if a.one:
        from lrl.core.cpu import set_torch_threads

        set_torch_threads(0)
        print("RESULT " + json.dumps(run_cell(a.one, a.steps, a.max_seconds)), flush=True)
        return 0
    import subprocess

    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.cells.split(","):
        free = available_gb()
        if free < NEED_GB[name] + 2:  # 2 GiB left to the others on this machine
            rows.append((name, f"skipped: needs ~{NEED_GB[name]} GiB, {free:.1f} GiB available"))
            print(rows[-1], flush=True)
            continue
        try:
            r = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--max-seconds",
                                str(a.max_seconds)], capture_output=True, text=True, timeout=a.timeout)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            rows.append((name, json.loads(line[-1][7:]) if line else f"failed: {r.stderr.strip().splitlines()[-1:]}"))
        except subprocess.TimeoutExpired:
            rows.append((name, f"skipped: over the {a.timeout:g} s timeout"))
        print(rows[-1], flush=True)
    table = ["| cell | result |", "|---|---|"]
    table += [f"| {n} | {json.dumps(r) if isinstance(r, dict) else r} |" for n, r in rows]
    note = (f"Random-init published shapes, yo-cv, {a.steps} updates per training cell, batches <= {a.max_seconds:g} s of "
            "padded audio, layer decay 0.9, the Transformer frozen for 1 update then 8 layers more per update; "
            "`trainable_m_by_step`: (update, M trainable parameters) at each change; peak RSS per cell process.")
    from bench._results import update_section

    update_section("scale", note + "\n\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
