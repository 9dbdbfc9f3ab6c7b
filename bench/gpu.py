"""XLS-R-300M-shaped CTC fine-tuning speed on a GPU: audio-seconds per second, peak GPU memory and achieved TFLOP/s
(against a bf16 matmul rate measured in the same run) for fp32 vs bf16, eager vs sdpa attention, gradient
checkpointing off/on, and lrl's dynamic batches vs HF-style fixed batches + group_by_length, on yo-cv clips.
Random weights (the shape is what costs); the feature encoder frozen, as in fine-tuning. One table to --out.

    python bench/gpu.py                      # a CUDA GPU, ~7 minutes (bench/gpu.sh wraps it)
    python bench/gpu.py --tiny --out x.md    # CPU smoke run: a 36k-parameter model, a few steps
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root instead of bench/ (a bench/NAME.py must never shadow a standard module of that name)
sys.path[:] = [str(ROOT), *(q for q in sys.path if Path(q or ".").resolve() != ROOT / "bench")]

# (precision, attention, gradient checkpointing, batching): the cells, each against its neighbour
CELLS = [
    ("fp32", "eager", False, "dynamic"),
    ("fp32", "sdpa", False, "dynamic"),
    ("bf16", "eager", False, "dynamic"),
    ("bf16", "sdpa", False, "dynamic"),
    ("bf16", "sdpa", True, "dynamic"),
    ("bf16", "sdpa", False, "group_by_length"),
]
XLSR_300M = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
)


def load_clips(yo_cv: Path, n: int, max_seconds: float):
    """(waveforms, label id lists, durations) of the first `n` train clips of a Common Voice folder."""
    import numpy as np

    from lrl.core.audio import load_audio
    from lrl.core.constants import SAMPLE_RATE

    with open(yo_cv / "train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    waves, texts = [], []
    for r in rows:
        if len(waves) >= n:
            break
        try:
            x = load_audio(yo_cv / "clips" / r["path"])
        except Exception:  # noqa: BLE001 - a bench skips what it cannot read
            continue
        if 0.5 < len(x) / SAMPLE_RATE <= max_seconds:
            waves.append(x.astype(np.float32))
            texts.append(r["sentence"].lower())
    chars = sorted({c for t in texts for c in t})
    ids = {c: i + 1 for i, c in enumerate(chars)}  # 0 = pad = blank
    labels = [[ids[c] for c in t] for t in texts]
    return waves, labels, [len(w) / SAMPLE_RATE for w in waves], len(chars) + 1


def synthetic_clips(n: int, max_seconds: float, seed: int = 0):
    """Noise clips with yo-cv's duration spread (2-10 s, mean ~5 s) and ~12 labels per second, for a machine that
    has no copy of yo-cv: speed and memory depend on the lengths, not on what is said."""
    import numpy as np

    rng = np.random.default_rng(seed)
    durations = np.clip(rng.gamma(6.0, 0.85, n), 1.5, min(10.0, max_seconds))
    waves = [(0.1 * rng.standard_normal(int(d * 16000))).astype(np.float32) for d in durations]
    labels = [rng.integers(1, 40, max(1, int(d * 12))).tolist() for d in durations]
    return waves, labels, [len(w) / 16000 for w in waves], 40


def batches_for(kind: str, durations, max_seconds: float, seed: int = 0) -> list[list[int]]:
    """lrl's dynamic batches (<= max_seconds of padded audio each) or HF-style fixed batches sized for the longest
    clip (what fits in the same memory) ordered by transformers' LengthGroupedSampler (group_by_length)."""
    from lrl.core.batching import pack_batches

    if kind == "dynamic":
        return pack_batches(durations, max_seconds, 0, seed)
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    bs = max(1, int(max_seconds // max(durations)))
    order = list(LengthGroupedSampler(bs, lengths=list(durations), generator=torch.Generator().manual_seed(seed)))
    return [order[i:i + bs] for i in range(0, len(order), bs)]


def collate(idx, waves, labels, device):
    import torch

    n = max(len(waves[i]) for i in idx)
    x = torch.zeros(len(idx), n)
    mask = torch.zeros(len(idx), n, dtype=torch.long)
    m = max(len(labels[i]) for i in idx)
    y = torch.full((len(idx), m), -100, dtype=torch.long)
    for j, i in enumerate(idx):
        w = torch.from_numpy(waves[i])
        x[j, : len(w)] = (w - w.mean()) / (w.std() + 1e-7)
        mask[j, : len(w)] = 1
        y[j, : len(labels[i])] = torch.tensor(labels[i])
    pin = device.type == "cuda"
    return [t.pin_memory().to(device, non_blocking=True) if pin else t for t in (x, mask, y)], n * len(idx) / 16000


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device, size: int, seconds: float = 2.0) -> float:
    """The bf16 matmul rate this device reaches (TFLOP/s): the roof the training step is held against."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        n += 10
        sync(device)
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e12


def step_flops(model, batch) -> float:
    """FLOPs of one forward + backward (model FLOPs: checkpointing's recomputation not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, mask, y = batch
    with FlopCounterMode(display=False) as fc:
        model(x, attention_mask=mask, labels=y).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def run_cell(model, init_state, cell, data, device, budget_s: float, max_steps: int, warmup: int) -> dict:
    import torch

    precision, attn, gc, batching = cell
    waves, labels, durations, max_seconds, flops_per_padded_s = data
    model.load_state_dict(init_state)
    model.set_attn_implementation(attn)
    if gc:  # transformers >= 5.2x names it activation_checkpointing
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable(activation_checkpointing_kwargs={"use_reentrant": False}) if enable else
         model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}))
    else:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    order = batches_for(batching, durations, max_seconds)
    dtype = torch.bfloat16 if precision == "bf16" else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    audio = padded = 0.0
    steps, t0 = 0, None
    try:
        for k in range(max_steps + warmup):
            if k == warmup:
                sync(device)
                t0 = time.perf_counter()
            idx = order[k % len(order)]
            batch, pad_s = collate(idx, waves, labels, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(batch[0], attention_mask=batch[1], labels=batch[2]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k >= warmup:
                audio += sum(durations[i] for i in idx)
                padded += pad_s
                steps += 1
                if time.perf_counter() - t0 > budget_s:
                    sync(device)
                    if time.perf_counter() - t0 > budget_s:
                        break
        sync(device)
        elapsed = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        return dict(status="OOM")
    finally:
        del opt
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return dict(status="ok", steps=steps, s_per_step=elapsed / max(steps, 1), audio_s_per_s=audio / elapsed,
                padding=audio / max(padded, 1e-9), peak_gb=peak, tflops=flops_per_padded_s * padded / elapsed / 1e12)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, a few steps: checks the script runs")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu-results.md", help="the table's file")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data", help="holds yo-cv/")
    p.add_argument("--budget-s", type=float, default=400.0, help="seconds for all cells together (GPU)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="padded audio per batch (0: 200 GPU, 8 tiny)")
    p.add_argument("--record", action="store_true", help="also write the table into bench/RESULTS.md (section gpu)")
    a = p.parse_args(argv)

    import torch
    import transformers
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not a.tiny
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 cells are fp32 (TF32 would be a third precision)
    max_seconds = a.max_seconds or (200.0 if cuda else 8.0)
    n_clips, longest = (400 if cuda else 24), min(15.0, max_seconds)
    if (a.data_root / "yo-cv" / "train.tsv").is_file():
        waves, labels, durations, vocab_size = load_clips(a.data_root / "yo-cv", n_clips, longest)
        source = "yo-cv clips"
    else:
        waves = []
    if not waves:
        print(f"no readable yo-cv clips under {a.data_root}: synthetic clips with its duration spread", flush=True)
        waves, labels, durations, vocab_size = synthetic_clips(n_clips, longest)
        source = "synthetic clips (yo-cv not found)"
    if a.tiny:
        from lrl.models.checkpoints import tiny_config

        config = tiny_config("test")
        config.vocab_size, config.pad_token_id = vocab_size, 0
    else:
        config = Wav2Vec2Config(**XLSR_300M, vocab_size=vocab_size, pad_token_id=0)
    config.ctc_loss_reduction, config.ctc_zero_infinity = "mean", True
    config.mask_time_prob, config.layerdrop = 0.05, 0.0
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).to(device)
    model.freeze_feature_encoder()
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    roof = matmul_tflops(device, 8192 if cuda else 256, 3.0 if cuda else 0.5)
    ref = batches_for("dynamic", durations, max_seconds)[0]
    batch, pad_s = collate(ref, waves, labels, device)
    model.set_attn_implementation("eager")
    flops_per_padded_s = step_flops(model, batch) / pad_s
    data = (waves, labels, durations, max_seconds, flops_per_padded_s)
    per_cell = max(5.0, (a.budget_s - (time.perf_counter() - t_start)) / len(CELLS)) if cuda else 1e9
    rows = []
    for cell in CELLS:
        r = run_cell(model, init_state, cell, data, device, per_cell, 10**6 if cuda else 2, 2 if cuda else 1)
        rows.append((cell, r))
        print(cell, r, flush=True)

    name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, --tiny)"
    mem = "peak GPU GiB" if cuda else "peak RSS GiB (process)"
    lines = [
        f"Device: {name}; torch {torch.__version__}, transformers {transformers.__version__}; model "
        f"{'XLS-R 300M shape' if not a.tiny else 'tiny test shape'} ({n_params / 1e6:.3g}M parameters, random init, "
        f"feature encoder frozen); {len(waves)} {source}, {sum(durations) / 60:.1f} min; batches <= "
        f"{max_seconds:g} s of padded audio. bf16 matmul roof measured here: {roof:.3g} TFLOP/s. Model FLOPs "
        f"{flops_per_padded_s / 1e9:.3g} GFLOP per padded audio-second (forward + backward, counted by "
        "torch.utils.flop_counter; checkpointing's recomputation not counted).",
        "",
        f"| precision | attention | checkpointing | batches | updates | s/update | audio-s/s | padding eff. | {mem} "
        "| TFLOP/s | % of bf16 roof |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (prec, attn, gc, batching), r in rows:
        gcs = "checkpointing on" if gc else "checkpointing off"
        if r["status"] != "ok":
            lines.append(f"| {prec} | {attn} | {gcs} | {batching} | {r['status']} | | | | | | |")
            continue
        lines.append(
            f"| {prec} | {attn} | {gcs} | {batching} | {r['steps']} | {r['s_per_step']:.3f} | {r['audio_s_per_s']:.1f} | "
            f"{100 * r['padding']:.0f}% | {r['peak_gb']:.2f} | {r['tflops']:.3g} | "
            f"{100 * r['tflops'] / roof if roof and math.isfinite(roof) else float('nan'):.0f}% |")
    lines.append("")
    lines.append(f"Whole run: {time.perf_counter() - t_start:.0f} s.")
    table = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(table, encoding="utf-8")
    print(table)
    if a.record:
        from bench._results import update_section

        update_section("gpu", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
