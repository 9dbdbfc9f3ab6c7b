"""Training throughput of lrl's dynamic batches (with and without lrl.train.featcache, the frozen conv front
end's output computed once) against the way HF's run_speech_recognition_ctc.py feeds the Trainer (fixed
batch size, train_sampling_strategy="group_by_length", pad to the longest), on yo-cv with the same
2.5M-parameter XLS-R-shaped model; plus the training step's achieved FLOP/s against a measured CPU
matmul rate.

Each arm runs one pass over the same clips in its own subprocess (peak RSS from ru_maxrss); arms are
interleaved (A B C A B C ...) and repeated, and ratios are medians over the repeats.

    .venv/bin/python bench/train.py [--clips 160] [--repeats 2] [--max-seconds 60] [--threads 1]

`--oversub` measures instead s/update of the same model on 16 s batches idle and beside 1 and 2 busy
processes (`while True: pass`, started here and always killed), for torch's default threads, 2 threads
with OMP_WAIT_POLICY=PASSIVE, 1 thread, and lrl's policy (lrl.core.cpu); one subprocess per cell, interleaved:

    .venv/bin/python bench/train.py --oversub [--updates 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
YO_CV = ROOT.parent / "shared" / "data" / "yo-cv"
WORK = Path(tempfile.gettempdir()) / "lrl-bench-train"


def prepare(work: Path) -> tuple[Path, Path]:
    from lrl.data.prepare import PrepareConfig
    from lrl.data.prepare import prepare as prepare_data
    from lrl.models.checkpoints import init_tiny

    data = work / "yo"
    if not (data / "dataset_dict.json").is_file():
        prepare_data(YO_CV, data, PrepareConfig(max_duration=15.0, num_proc=2))
    ckpt = work / "small"
    if not (ckpt / "model.safetensors").is_file():
        init_tiny(ckpt, "small", seed=0)
    return data, ckpt


def _batches(arm: str, durations: list[float], max_seconds: float, batch_size: int, seed: int) -> list[list[int]]:
    if arm.startswith("lrl"):
        from lrl.train.batching import BatchingConfig, DynamicBatchSampler

        s = DynamicBatchSampler(durations, BatchingConfig(max_seconds=max_seconds, seed=seed))
        return list(s)
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    g = torch.Generator().manual_seed(seed)
    order = list(LengthGroupedSampler(batch_size, lengths=[int(d * 16000) for d in durations], generator=g))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def run_arm(arm: str, data: Path, ckpt: Path, clips: int, max_seconds: float, batch_size: int, threads: int,
            flops: bool) -> dict:
    """One pass over the first `clips` training clips; prints a JSON line with the measurements."""
    import numpy as np
    import torch

    from lrl.data.prepare import load_prepared
    from lrl.models.checkpoints import load_for_ctc
    from lrl.train.collate import CTCCollator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dsd, vocab = load_prepared(data)
    ds = dsd["train"].select(range(min(clips, len(dsd["train"])))).select_columns(["audio", "text", "duration"])
    ds = ds.with_format("numpy")
    durations = [float(d) for d in ds["duration"]]
    model = load_for_ctc(ckpt, len(vocab), 0, mask_time_prob=0.05, mask_time_length=5, mask_feature_prob=0.0)
    model.freeze_feature_encoder()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = CTCCollator(vocab)
    batches = _batches(arm, durations, max_seconds, batch_size, seed=0)
    build_s, front_end = 0.0, contextlib.nullcontext()
    if arm == "lrl_cached":  # lrl.train.featcache: the frozen conv front end's output computed once (timed apart)
        from lrl.train.featcache import CachedFeatureCollator, build_feature_cache, cached_front_end

        cache = build_feature_cache(model, ds, durations, collate)
        build_s, front_end = cache.build_seconds, cached_front_end(model)
        texts = ds["text"]
        cached = CachedFeatureCollator(cache, collate)
    real = padded = 0.0
    step_times = []
    with front_end:
        for b in batches:
            inputs = cached([{"row": i, "text": texts[i]} for i in b]) if arm == "lrl_cached" else collate([ds[i] for i in b])
            t0 = time.perf_counter()
            loss = model(**inputs).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
            real += sum(durations[i] for i in b)
            padded += max(durations[i] for i in b) * len(b)
    out = {
        "arm": arm, "steps": len(batches), "audio_s": real, "train_s": sum(step_times), "cache_build_s": build_s,
        "audio_s_per_s": real / sum(step_times), "padding_eff": real / padded,
        "max_batch_padded_s": max(max(durations[i] for i in b) * len(b) for b in batches),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # before the FLOP count below
    }
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        b = max(batches, key=lambda b: sum(durations[i] for i in b))
        inputs = collate([ds[i] for i in b])
        with FlopCounterMode(display=False) as fc:
            model(**inputs).loss.backward()
        opt.zero_grad(set_to_none=True)
        n = fc.get_total_flops()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model(**inputs).loss.backward()
            times.append(time.perf_counter() - t0)
            opt.zero_grad(set_to_none=True)
        a = torch.randn(1024, 1024)
        mm = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ a
            mm.append(time.perf_counter() - t0)
        out.update(step_flops=n, step_flop_s=n / statistics.median(times),
                   matmul_flop_s=2 * 1024**3 / statistics.median(mm), flops_batch_audio_s=sum(durations[i] for i in b))
    del np
    print(json.dumps(out))
    return out


OVERSUB_ARMS = {  # arm -> (environment to add, torch threads: 0 = torch's default, -1 = lrl's policy)
    "torch": ({}, 0),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "one_thread": ({}, 1),
    "lrl": ({}, -1),  # lrl.core.cpu.set_openmp_env + set_torch_threads(0), the code path of `lrl train run`
}
OVERSUB_MAX_SECONDS = 16.0  # lrl's default padded seconds per batch (lrl.train.batching.DEFAULT_MAX_SECONDS)
CELL_TIME_CAP_S = 40.0  # a cell stops timing after this (>= 5 updates), so spin-wait collapses stay bounded


def run_cell(arm: str, data: Path, ckpt: Path, updates: int, warmup: int) -> dict:
    """`warmup` + `updates` training updates on fixed 16 s batches; prints a JSON line with the step times."""
    reason = "torch's default"
    if OVERSUB_ARMS[arm][1] == -1:
        from lrl.core.cpu import set_openmp_env

        set_openmp_env()  # before torch loads, as lrl/cli.py does
    import torch

    if OVERSUB_ARMS[arm][1] == -1:
        from lrl.core.cpu import set_torch_threads

        _, reason = set_torch_threads(0)
    elif OVERSUB_ARMS[arm][1]:
        torch.set_num_threads(OVERSUB_ARMS[arm][1])
    from lrl.data.prepare import load_prepared
    from lrl.models.checkpoints import load_for_ctc
    from lrl.train.batching import BatchingConfig, DynamicBatchSampler
    from lrl.train.collate import CTCCollator

    torch.manual_seed(0)
    dsd, vocab = load_prepared(data)
    ds = dsd["train"].select(range(min(80, len(dsd["train"])))).select_columns(["audio", "text", "duration"])
    ds = ds.with_format("numpy")
    durations = [float(d) for d in ds["duration"]]
    model = load_for_ctc(ckpt, len(vocab), 0, mask_time_prob=0.05, mask_time_length=5, mask_feature_prob=0.0)
    model.freeze_feature_encoder()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = CTCCollator(vocab)
    batches = list(DynamicBatchSampler(durations, BatchingConfig(max_seconds=OVERSUB_MAX_SECONDS, seed=0)))
    inputs = [collate([ds[i] for i in b]) for b in batches[: warmup + updates]]
    times, started = [], time.perf_counter()
    for k in range(warmup + updates):
        t0 = time.perf_counter()
        model(**inputs[k % len(inputs)]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            if len(times) >= 5 and time.perf_counter() - started > CELL_TIME_CAP_S:
                break
    out = {"arm": arm, "threads": torch.get_num_threads(), "reason": reason,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "updates": len(times),
           "s_per_update": statistics.median(times), "mean_s": statistics.mean(times)}
    print(json.dumps(out))
    return out


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def oversub(a: argparse.Namespace) -> None:
    """Every arm idle and beside 1 and 2 busy processes; a table of median s/update and slowdown vs idle."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below kills the busy loops
    loads, arms = (0, 1, 2), list(OVERSUB_ARMS)
    results: dict[tuple[str, int], list[dict]] = {(arm, n): [] for arm in arms for n in loads}
    started = time.perf_counter()
    for r in range(a.repeats):
        for j, n in enumerate(loads):
            procs = _busy(n)
            try:
                time.sleep(1.0 if n else 0.0)
                k = (r * len(loads) + j) % len(arms)  # rotate the arm order, so no arm always goes first
                for arm in arms[k:] + arms[:k]:
                    env = {key: v for key, v in os.environ.items() if key != "OMP_WAIT_POLICY"} | OVERSUB_ARMS[arm][0]
                    cmd = [sys.executable, __file__, "--cell", arm, "--updates", str(a.updates)]
                    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
                    if res.returncode:
                        raise RuntimeError(f"cell {arm} beside {n} busy failed:\n{res.stderr[-3000:]}")
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                    results[(arm, n)].append(row)
                    print(n, json.dumps(row), flush=True)
            finally:
                _stop(procs)
    took = time.perf_counter() - started

    def med(arm: str, n: int) -> float:
        return statistics.median(row["s_per_update"] for row in results[(arm, n)])

    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), "unknown CPU")
    labels = {"torch": "torch default (its thread count, OpenMP spin-waits)",
              "passive": "torch default threads + OMP_WAIT_POLICY=PASSIVE",
              "one_thread": "1 thread (`--set threads=1`)",
              "lrl": "lrl policy (`threads=0`: lrl.core.cpu, PASSIVE + free CPUs)"}
    lines = [
        f"{os.cpu_count()} CPUs ({cpu}); yo-cv, `tiny_config(\"small\")`, lrl batches of <= {OVERSUB_MAX_SECONDS:g} s "
        f"padded audio, median over {a.updates} updates after 3 warm-up ones (a cell stops after {CELL_TIME_CAP_S:g} s), "
        f"each cell in its own process, arms interleaved under the same busy processes (`python -c \"while True: pass\"`), "
        f"{a.repeats} repeat(s); {took / 60:.1f} min in all.",
        "",
        "| arm | threads per repeat (idle / 1 busy / 2 busy) | s/update idle | 1 busy | 2 busy | slowdown 1 busy | "
        "slowdown 2 busy | 1 busy vs torch idle | 2 busy vs torch idle |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = med("torch", 0)
    for arm in arms:
        thr = " / ".join(",".join(str(row["threads"]) for row in results[(arm, n)]) for n in loads)
        lines.append(f"| {labels[arm]} | {thr} | {med(arm, 0):.3f} | {med(arm, 1):.3f} | {med(arm, 2):.3f} | "
                     f"{med(arm, 1) / med(arm, 0):.2f}x | {med(arm, 2) / med(arm, 0):.2f}x | "
                     f"{med(arm, 1) / base:.2f}x | {med(arm, 2) / base:.2f}x |")
    lines += ["", "lrl's choices (the sample sees every other process, ours and the machine's): " + "; ".join(
        f"{n} busy: " + " / ".join(row["reason"] for row in results[("lrl", n)]) for n in loads) + "."]
    md = "\n".join(lines)
    print(md)
    if a.write:
        from _results import update_section

        update_section("train-oversub", md, command="python bench/train.py " + " ".join(sys.argv[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=160, help="training clips per pass")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of every arm")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="lrl's cap on padded seconds per batch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm (1: stable on shared cores)")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--oversub", action="store_true", help="s/update idle vs beside 1 and 2 busy processes, per thread policy")
    ap.add_argument("--updates", type=int, default=20, help="--oversub: timed updates per cell (after 3 warm-up ones)")
    ap.add_argument("--no-write", dest="write", action="store_false", help="--oversub: print only, leave RESULTS.md")
    ap.add_argument("--cell", choices=list(OVERSUB_ARMS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    data, ckpt = prepare(WORK)
    if a.cell:
        run_cell(a.cell, data, ckpt, a.updates, warmup=3)
        return
    if a.oversub:
        oversub(a)
        return
    if a.arm:
        run_arm(a.arm, data, ckpt, a.clips, a.max_seconds, a.batch_size, a.threads, a.flops)
        return

    from lrl.data.prepare import load_prepared

    dsd, _ = load_prepared(data)
    durs = [float(d) for d in dsd["train"].select(range(min(a.clips, len(dsd["train"]))))["duration"]]
    longest, mean = max(durs), sum(durs) / len(durs)
    # fixed batch sizes: one that fits the same padded-seconds budget for its worst batch (memory-matched),
    # one with the same mean audio per batch as lrl's batches (update-matched, as people usually pick it)
    b_mem = max(1, int(a.max_seconds // longest))
    b_mean = max(1, round(a.max_seconds * 0.9 / mean))
    arms = [("lrl", 0), ("lrl_cached", 0), ("hf_same_memory", b_mem), ("hf_same_mean_batch", b_mean)]
    results: dict[str, list[dict]] = {name: [] for name, _ in arms}
    for r in range(a.repeats):
        for name, bs in arms:
            cmd = [sys.executable, __file__, "--arm", name if name.startswith("lrl") else "hf", "--clips", str(a.clips),
                   "--max-seconds", str(a.max_seconds), "--threads", str(a.threads), "--batch-size", str(bs)]
            if name == "lrl" and r == 0:
                cmd.append("--flops")
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            results[name].append(row)
            print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    def ratio(x, y, epochs=None):
        """Median per-repeat speed-up of arm x over arm y; with `epochs`, x's cache build is paid once."""
        out = []
        for rx, ry in zip(results[x], results[y], strict=True):
            tx = rx["train_s"] if epochs is None else rx["cache_build_s"] + epochs * rx["train_s"]
            ty = ry["train_s"] if epochs is None else ry["cache_build_s"] + epochs * ry["train_s"]
            out.append(ty / tx)
        return statistics.median(out)

    lines = [
        f"yo-cv train, first {len(durs)} clips ({sum(durs) / 60:.1f} min of audio, {mean:.1f} s mean, {longest:.1f} s longest), "
        f"`tiny_config(\"small\")` (2.5M params, feature encoder frozen, no waveform augmentation), AdamW, {a.threads} torch "
        f"thread(s), one pass per arm in its own process, {a.repeats} interleaved repeats, medians.",
        "",
        "| arm | batches | padded s per batch (max) | padding efficiency | audio-s/s per pass | lrl dynamic vs this | "
        "lrl dynamic + conv cache vs this (per pass) | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"lrl": f"lrl dynamic, <= {a.max_seconds:g} s padded",
              "lrl_cached": f"lrl dynamic, <= {a.max_seconds:g} s padded, conv front end cached (lrl.train.featcache)",
              "hf_same_memory": f"HF fixed batch {b_mem} + group_by_length (worst batch fits the same budget)",
              "hf_same_mean_batch": f"HF fixed batch {b_mean} + group_by_length (same mean audio per batch)"}
    for name, _ in arms:
        rows = results[name]
        lines.append(
            f"| {labels[name]} | {rows[0]['steps']} | {rows[0]['max_batch_padded_s']:.0f} | {med(name, 'padding_eff'):.1%} | "
            f"{med(name, 'audio_s_per_s'):.1f} | {ratio('lrl', name):.2f}x | {ratio('lrl_cached', name):.2f}x | "
            f"{med(name, 'peak_rss_mib'):.0f} |"
        )
    f = results["lrl"][0]
    hf = ("hf_same_memory", "hf_same_mean_batch")
    bound = {name: med("lrl", "padding_eff") / med(name, "padding_eff") for name in hf}
    build, cached_pass = med("lrl_cached", "cache_build_s"), med("lrl_cached", "train_s")
    base_pass = med("hf_same_memory", "train_s")
    even = build / max(base_pass - cached_pass, 1e-9)
    lines += [
        "",
        "Dynamic batching alone (lrl vs HF): " + ", ".join(f"{k} {ratio('lrl', k):.2f}x" for k in hf)
        + " (target 1.5x). Removing padding can gain at most the ratio of padding efficiencies: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in bound.items()) + ".",
        "",
        f"The conv cache costs one forward pass of the front end over the data ({build:.0f} s here, "
        f"{build / cached_pass:.2f} of a cached pass), paid once per run: counting it, lrl + cache vs HF same-memory is "
        + ", ".join(f"{ratio('lrl_cached', 'hf_same_memory', e):.2f}x over {e} epoch{'s' if e > 1 else ''}" for e in (1, 5, 30))
        + f" (break-even after {even:.1f} epochs). It applies while the feature encoder is frozen and the waveform is "
        "not augmented (lrl turns it off otherwise, and for runs planned under 1.5 epochs).",
        "",
        f"Training step FLOP/s (forward+backward, FlopCounterMode, largest lrl batch of {f['flops_batch_audio_s']:.0f} s audio, no cache): "
        f"{f['step_flops'] / 1e9:.1f} GFLOP per step at {f['step_flop_s'] / 1e9:.2f} GFLOP/s achieved vs "
        f"{f['matmul_flop_s'] / 1e9:.1f} GFLOP/s for a 1024x1024 fp32 matmul on the same thread(s) "
        f"= {f['step_flop_s'] / f['matmul_flop_s']:.0%} of the matmul rate.",
    ]
    from _results import update_section

    md = "\n".join(lines)
    print(md)
    update_section("train", md)


if __name__ == "__main__":
    main()
