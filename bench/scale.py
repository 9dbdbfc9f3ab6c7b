"""Real model scale on this CPU: random-init XLS-R 300M and MMS-1b-all shapes (safetensors, as the hub ships them)
through `lrl train run` on yo-cv (layer-wise decay + progressive unfreezing, gradient checkpointing off/on: s/update,
peak RSS, trainable parameters per phase; the peak against what `lrl train find-batch` predicts) and MMS adapter mode
(adapters + head; adapter.<lang>.safetensors loaded back with load_adapter gives the same outputs), `lrl pretrain` for
2 updates on the 300M shape, and `lrl evaluate` / `lrl transcribe` of one 60 s clip (yo-cv test clips end to end,
run in overlapping chunks) with the 300M CTC model train-300m-gc wrote. Each cell runs in its own process (its own
peak RSS), one at a time; a cell whose memory need passes what `free` shows is skipped. Rows of cells not run this
time are kept from the section already in RESULTS.md, with the time they were measured.

    python bench/scale.py [--cells build-300m,train-300m-gc,...] [--steps 3]   # table into RESULTS.md (scale)
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from itertools import pairwise
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
# GiB a cell's process needs at its peak (measured on yo-cv, whose training clips run to 15 s: a batch of one such
# clip is the peak; the find-batch probe after training counts too). train-1b(-gc): 3.9 GB of fp32 weights, and its
# protocol trains at most 16 of the 48 layers (8 more per update, 3 updates), so gradients + AdamW state cover ~315M
# parameters (3.8 GB), not 1B (the ~20 GiB of a full fine-tune); adapter cells without checkpointing keep the
# activations of every layer (an adapter in each).
NEED_GB = {"build-300m": 4, "build-1b": 10, "train-300m": 8, "train-300m-gc": 7, "adapter-300m": 9,
           "adapter-300m-gc": 6, "train-1b": 15, "train-1b-gc": 10, "adapter-1b": 17, "adapter-1b-gc": 10,
           "pretrain-300m": 8, "evaluate-300m": 3, "transcribe-300m": 3}
CELLS = list(NEED_GB)
LONG_SECONDS = 60.0  # the evaluate/transcribe clip: yo-cv test clips end to end, padded with silence to this


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
    batches: list[tuple[int, float]] = []  # (clips, padded seconds) of each batch collated (the loader may read ahead)
    collate = trainer_mod.CTCCollator.__call__

    def recording_collate(self, rows):
        out = collate(self, rows)
        batches.append((len(rows), round(out["input_values"].shape[1] / 16000, 1)))
        return out

    trainer_mod.CTCCollator.__call__ = recording_collate
    ckpt = WORK / f"xlsr-{shape}"
    kind = ("adapter-gc" if gc else "adapter") if adapter else "gc" if gc else "nogc"
    out = WORK / f"run-{shape}-{kind}"
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
    peak = _peak_gb()  # training's peak, before the checks below load the model again
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r.get("elapsed_s")]
    el = sorted({float(r["elapsed_s"]) for r in rows})
    s_update = (el[-1] - el[0]) / (len(el) - 1) if len(el) > 1 else float("nan")
    res = dict(updates=result.global_step, s_per_update=round(s_update, 1), run_s=round(total, 1),
               peak_rss_train_gb=round(peak, 2), batches=batches[:steps],
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
        del model
    # what find-batch predicts for this cap (its default 4 s probe clips), and its fixed bytes + the activation
    # bytes its probe measures for the cell's first batch (the sampler puts the costliest first; a clip over the cap
    # is a batch of one): the model as `lrl train find-batch` loads it, the whole Transformer trainable, or in adapter
    # mode the adapters + head
    from lrl.models.checkpoints import load_for_ctc
    from lrl.train.batching import _activation_bytes
    from lrl.train.freezing import FreezeConfig, apply_freeze

    model = load_for_ctc(ckpt, 64, 0, adapter_attn_dim=16 if adapter else None)
    model.freeze_feature_encoder()
    if adapter:
        apply_freeze(model, FreezeConfig(adapters=True).trainable_units(0, model.config.num_hidden_layers, 7))
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    est = find_max_seconds(model, budget_bytes=64 * 2**30, clip_seconds=4.0)
    res["find_batch_predicted_gb"] = round((est.fixed_bytes + est.bytes_per_second * max_seconds) / 2**30, 2)
    if batches:
        clips, padded = batches[0]
        first = _activation_bytes(model, clips * padded, clips, 16000)
        res["find_batch_first_batch_gb"] = round((est.fixed_bytes + first) / 2**30, 2)
    res["peak_rss_gb"] = round(_peak_gb(), 2)
    for ckpt_dir in out.glob("checkpoint-*"):  # resumable state (weights + AdamW): 12 GB for the 1B shape
        import shutil

        shutil.rmtree(ckpt_dir)
    return res


def pretrain_cell(steps: int) -> dict:
    """`lrl pretrain` (its library function) on the 300M checkpoint: `steps` updates of 2 crops <= 4 s (<= 8 s of
    audio, the training cells' cap), the whole model trainable as the CLI's default."""
    import shutil

    from lrl.train.pretrain import PretrainConfig, run_pretraining

    out = WORK / "pretrain-300m"
    if out.exists():
        shutil.rmtree(out)
    config = PretrainConfig(max_steps=steps, batch_size=2, max_seconds=4.0, warmup_steps=1, save_every=0,
                            probe_crops=2)
    t0 = time.perf_counter()
    result = run_pretraining([prepared()], out, config, model=WORK / "xlsr-300m")
    total = time.perf_counter() - t0
    import csv

    rows = list(csv.DictReader((out / "pretrain_log.csv").open()))
    return dict(updates=result.steps, s_per_update=round(sum(float(r["seconds"]) for r in rows) / len(rows), 1),
                run_s=round(total, 1), peak_rss_gb=round(_peak_gb(), 2), crops=result.inputs.crops,
                losses=[round(float(r["loss"]), 3) for r in rows],
                model_written=(out / "model.safetensors").is_file())


def ctc_model(trained: bool) -> Path:
    """A 300M-shaped CTC model directory. `trained`: what train-300m-gc wrote (`lrl train run` output; after 3
    updates it emits only blanks); else the 300M checkpoint with a fresh random head over the prepared vocabulary,
    saved as training saves (its argmax is a random letter per frame: non-empty text through the chunk merge)."""
    trained_dir = WORK / "run-300m-gc"
    if trained and (trained_dir / "model.safetensors").is_file() and (trained_dir / "vocab.json").is_file():
        return trained_dir
    from lrl.core.audio import default_feature_extractor
    from lrl.data.vocab import Vocab
    from lrl.models.checkpoints import load_for_ctc

    out = WORK / "ctc-300m"
    if not (out / "model.safetensors").is_file():
        vocab = Vocab.load(prepared() / "vocab")
        load_for_ctc(WORK / "xlsr-300m", len(vocab), 0).save_pretrained(out)
        default_feature_extractor().save_pretrained(out)
        vocab.save(out)
    return out


def long_clip() -> tuple[Path, Path]:
    """(the 60 s wav, a prepared dataset whose test split is that one row): yo-cv test clips in file order,
    end to end while they fit, then silence up to LONG_SECONDS; the reference is their sentences joined."""
    import csv

    import numpy as np
    import soundfile as sf

    from lrl.core.audio import load_audio
    from lrl.core.constants import SAMPLE_RATE
    from lrl.data.prepare import PrepareConfig, prepare

    src = WORK / "long60"
    wav, data = src / "long60.wav", WORK / "long60-prepared"
    if not wav.is_file():
        src.mkdir(parents=True, exist_ok=True)
        waves, texts, n = [], [], int(LONG_SECONDS * SAMPLE_RATE)
        for row in csv.DictReader((YO_CV / "test.tsv").open(encoding="utf-8"), delimiter="\t"):
            w = load_audio(YO_CV / "clips" / row["path"])
            if sum(map(len, waves)) + len(w) > n:
                break
            waves.append(w)
            texts.append(row["sentence"])
        audio = np.concatenate(waves)
        sf.write(wav, np.pad(audio, (0, n - len(audio))), SAMPLE_RATE)
        (src / "manifest.tsv").write_text(f"path\tsentence\tsplit\n{wav.name}\t{' '.join(texts)}\ttest\n",
                                          encoding="utf-8")
    prepare(src / "manifest.tsv", data, PrepareConfig(splits=("test",), max_duration=LONG_SECONDS + 1),
            vocab_dir=prepared() / "vocab")
    return wav, data


def _count_forward_passes() -> tuple[list[float], list[int]]:
    """Wrap AcousticModel.log_probs to record the seconds of audio of each call (one call per chunk), and
    chunked_log_probs (as transcribe imported it) to record the frames of each merged clip."""
    from lrl.evaluate import inference, transcribe

    calls: list[float] = []
    frames: list[int] = []
    plain, merge = inference.AcousticModel.log_probs, transcribe.chunked_log_probs

    def counting(self, waves, *a, **kw):
        calls.extend(round(len(w) / self.sample_rate, 1) for w in waves)
        return plain(self, waves, *a, **kw)

    def merged(am, wave, config):
        lp = merge(am, wave, config)
        frames.append(len(lp))
        return lp

    inference.AcousticModel.log_probs = counting
    transcribe.chunked_log_probs = merged
    return calls, frames


def evaluate_cell() -> dict:
    """`lrl evaluate` (library) of the 60 s row, greedy, log-prob cache off (so the model runs)."""
    from lrl.evaluate.scoring import EvaluateConfig, evaluate

    _, data = long_clip()
    calls, _ = _count_forward_passes()
    t0 = time.perf_counter()
    res = evaluate(ctc_model(trained=True), data, EvaluateConfig(cache=False), use_lm=False, out_dir=WORK / "eval-long60")
    return dict(wall_s=round(time.perf_counter() - t0, 1), rtf_model=round(res.rtf_model, 3),
                peak_rss_gb=round(_peak_gb(), 2), scored=res.n, chunked=res.chunked,
                chunks_s=calls, greedy_cer=round(res.greedy.cer, 3))


def transcribe_cell() -> dict:
    """`lrl transcribe` (library) of the 60 s wav, greedy: chunks run and the word timestamps that come out."""
    from transformers import Wav2Vec2Config

    from lrl.core.hf_transformers import conv_output_lengths
    from lrl.evaluate.transcribe import TranscribeConfig, transcribe

    wav, _ = long_clip()
    model = ctc_model(trained=False)
    calls, frames = _count_forward_passes()
    t0 = time.perf_counter()
    (t,) = transcribe(model, [wav], TranscribeConfig(use_lm=False))
    wall = time.perf_counter() - t0
    ends = [w["end"] for w in t.words]
    one_pass = int(conv_output_lengths(round(t.duration * 16000), Wav2Vec2Config.from_pretrained(model)))
    return dict(wall_s=round(wall, 1), peak_rss_gb=round(_peak_gb(), 2), duration_s=t.duration, chunks_s=calls,
                frames_merged=frames, frames_one_pass=one_pass, words=len(t.words), chars=len(t.text),
                first_words=[{**w, "word": w["word"][:12]} for w in t.words[:2]],
                last_word_end_s=max(ends) if ends else None,
                times_ordered=all(a["start"] <= a["end"] <= b["start"] for a, b in pairwise(t.words)))


def run_cell(name: str, steps: int, max_seconds: float, pretrain_steps: int = 2) -> dict:
    kind, shape, *gc = name.split("-")  # build-300m, train-300m-gc, adapter-1b
    if kind == "build":
        return build(shape)
    if kind in ("pretrain", "evaluate", "transcribe"):  # 300M only
        return {"pretrain": lambda: pretrain_cell(pretrain_steps), "evaluate": evaluate_cell,
                "transcribe": transcribe_cell}[kind]()
    return train_cell(shape, gc=bool(gc), adapter=kind == "adapter", steps=steps, max_seconds=max_seconds)


def previous_rows() -> dict[str, tuple[str, str]]:
    """cell -> (when, result) of the rows measured before, read from the scale section of RESULTS.md (rows without
    a JSON result, i.e. skips and notes, are not kept: this run says what is still missing)."""
    from bench._results import RESULTS

    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    section = re.search(r"<!-- bench:scale -->(.*?)<!-- /bench:scale -->", text, re.S)
    if not section:
        return {}
    stamp = re.search(r"_run (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", section.group(1))
    rows = {}
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 2 and cells[1].startswith("{"):  # the first layout: | cell | result |
            cells = [cells[0], stamp.group(1) if stamp else "", cells[1]]
        if len(cells) == 3 and cells[0] in NEED_GB and cells[2].startswith("{"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {CELLS}")
    p.add_argument("--steps", type=int, default=3, help="updates per training cell")
    p.add_argument("--pretrain-steps", type=int, default=2, help="updates of the pretrain cell")
    p.add_argument("--max-seconds", type=float, default=8.0, help="padded audio per batch")
    p.add_argument("--timeout", type=float, default=900, help="seconds per cell")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one cell in this process, print its JSON
    a = p.parse_args(argv)
    if a.one:
        from lrl.core.cpu import set_torch_threads

        set_torch_threads(0)
        print("RESULT " + json.dumps(run_cell(a.one, a.steps, a.max_seconds, a.pretrain_steps), ensure_ascii=False),
              flush=True)
        return 0
    import subprocess
    from datetime import datetime, timezone

    unknown = [n for n in a.cells.split(",") if n not in NEED_GB]
    if unknown:
        p.error(f"unknown cells {unknown}; choose from {CELLS}")
    WORK.mkdir(parents=True, exist_ok=True)
    rows = previous_rows()
    for name in a.cells.split(","):
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        free = available_gb()
        if free < NEED_GB[name] + 2:  # 2 GiB left to the others on this machine
            rows[name] = (when, f"skipped: needs ~{NEED_GB[name]} GiB, {free:.1f} GiB available")
            print(name, rows[name], flush=True)
            continue
        try:
            r = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--max-seconds",
                                str(a.max_seconds), "--pretrain-steps", str(a.pretrain_steps)],
                               capture_output=True, text=True, timeout=a.timeout)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            why = f"failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}"
            rows[name] = (when, line[-1][7:] if line else why)
        except subprocess.TimeoutExpired:
            rows[name] = (when, f"skipped: over the {a.timeout:g} s timeout")
        print(name, rows[name], flush=True)
    table = ["| cell | measured | result |", "|---|---|---|"]
    table += [f"| {n} | {rows[n][0]} | {rows[n][1]} |" for n in CELLS if n in rows]
    missing = [n for n in CELLS if n not in rows]
    if missing:
        table.append(f"| {', '.join(missing)} | | not measured |")
    note = (f"Random-init published shapes (XLS-R 300M: 317M parameters with the quantizer, MMS-1b-all: 968M), "
            f"prepared yo-cv (clips up to 15 s), {a.steps} updates per training cell, batches <= {a.max_seconds:g} s "
            "of padded audio, a longer clip alone (`batches`: (clips, padded seconds) of each update's batch; rows "
            "without it predate the field), layer decay 0.9, the Transformer frozen for 1 update then 8 layers "
            "more per update (adapter cells: the adapters + head only, all along); `trainable_m_by_step`: (update, M trainable parameters) at each change (0.0 = the head "
            "only); `peak_rss_gb`: the peak RSS of the cell's own process, `peak_rss_train_gb`: the same up to the end of "
            "training (before the checks that load the model again); `find_batch_predicted_gb`: find-batch's "
            f"fixed bytes + bytes per second x {a.max_seconds:g} s, for the whole Transformer trainable (adapter cells: "
            "adapters + head), `find_batch_first_batch_gb`: its fixed bytes + the activation bytes its probe measures for the cell's first "
            "batch (the sampler puts the costliest first; measure at your longest clips, as `--clip-seconds` says). "
            "pretrain: "
            f"{a.pretrain_steps} updates of 2 crops <= 4 s, the whole model trainable. evaluate/transcribe: one "
            f"{LONG_SECONDS:g} s clip (yo-cv test clips end to end + silence), greedy, chunks of 20 s with 2 s "
            "context (`chunks_s`: seconds of audio per forward pass; `frames_merged` against `frames_one_pass`, the "
            "frames one unchunked pass gives: the time grid word times are read on). evaluate runs the CTC model "
            "train-300m-gc wrote (3 updates: it emits only blanks, so CER 1.0); transcribe the 300M checkpoint with "
            "a fresh random head over the same vocabulary (random letters, no word delimiter: one 'word' over the "
            "whole clip), so non-empty text crosses the chunk joins. The text is noise either way: the path, its "
            "time and its memory are what is measured. 2 cores shared with "
            "other sessions' benchmarks: seconds include their load and vary from run to run.")
    from bench._results import update_section

    update_section("scale", note + "\n\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
