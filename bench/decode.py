"""Bench: utterances/s and WER of lrl's beam search backends against pyctcdecode's own `decoder.decode()`
called serially (the baseline): lrl's pool over stock pyctcdecode, and the C++ backend (flashlight-text) in
one process and over all cores, on the same log-probs and the same KenLM model, at beam 32 and 100, in one
run, interleaved (ABAB...) because other work shares the cores. The C++ word search runs over the LM's
unigrams alone (closed vocabulary) and with the training transcripts' words added (`--lexicon train.tsv`);
pyctcdecode with those words as unigrams is the reference that tells the backend from the words. Then word
3-gram vs character n-gram LMs from the same text, each tuned on dev (small alpha/beta grid, C++ backend) and
scored on test.

Log-probs: CTC-shaped posteriors built from the yo-cv dev+test transcripts and their real clip durations
(20 ms frames: 1-2 frame spikes per character, blanks between, 12% of characters with the wrong token on
top and the right one as runner-up);
LM: `lrl lm build ../shared/data/lm-text/yo.txt --vocab V --order 3 --oov strip-marks [--lexicon train.tsv]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

SHARED = ROOT.parent / "shared" / "data"
LRL = str(Path(sys.executable).parent / "lrl")


def synth_logp(text: str, n_frames: int, vocab, rng: np.random.Generator, err: float = 0.12) -> np.ndarray:
    """CTC-like log-probs (frames, vocab) for normalised `text` spoken over `n_frames` 20 ms frames, shaped
    like a fine-tuned wav2vec2's output: 1-2 frame spikes per token, blanks between them and in the
    leading/trailing silence; 12% of tokens have a wrong character on top with the right one as runner-up;
    10% of blank frames are soft (other tokens above pyctcdecode's token_min_logp)."""
    ids = vocab.encode(text)
    chars = list(range(3, len(vocab)))
    V = len(vocab)
    spikes = [1 + int(rng.random() < 0.2) for _ in ids]
    n_frames = max(n_frames, sum(spikes) + len(ids) + 10)
    free = n_frames - sum(spikes)
    lead, trail = (int(free * rng.uniform(0.05, 0.15)) for _ in range(2))
    weights = rng.dirichlet(np.ones(max(len(ids) - 1, 1)))
    gaps = np.floor(weights * (free - lead - trail)).astype(int)

    def frame(top: int, second: int | None, boost: float) -> np.ndarray:
        x = rng.normal(0, 1, V)
        x[top] += boost
        if second is not None:
            x[second] += boost - rng.uniform(0.3, 2.0)
        return x

    def blank() -> np.ndarray:
        return frame(0, None, rng.uniform(4, 7) if rng.random() < 0.1 else rng.uniform(9, 12))

    rows = [blank() for _ in range(lead)]
    for k, (tok, n) in enumerate(zip(ids, spikes, strict=True)):
        wrong = tok != 2 and rng.random() < err
        top = int(rng.choice(chars)) if wrong else tok
        rows += [frame(top, tok if wrong else None, rng.uniform(5, 9)) for _ in range(n)]
        if k < len(ids) - 1:
            rows += [blank() for _ in range(max(int(gaps[k]), int(ids[k + 1] == tok)))]
    rows += [blank() for _ in range(trail)]
    x = np.stack(rows).astype(np.float32)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds (median reported)")
    ap.add_argument("--beams", default="32,100", help="beam widths, comma-separated")
    ap.add_argument("--char-orders", default="4,5,6", help="character LM orders compared with the word 3-gram")
    args = ap.parse_args()

    import logging

    import jiwer
    from _results import update_section
    from pyctcdecode import build_ctcdecoder

    from lrl.core.io import read_table
    from lrl.core.text import Normalizer
    from lrl.data.vocab import Vocab
    from lrl.decode.decoder import CTCDecoder, DecoderConfig, available_cores
    from lrl.decode.lm import find_lm, labels_for_vocab, read_unigrams

    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="lrl-bench-decode-"))
    subprocess.run([LRL, "-q", "vocab", "build", str(SHARED / "yo-cv" / "train.tsv"), "--out", str(tmp / "vocab")],
                   check=True, capture_output=True)

    def build(name: str, *extra: str) -> str:
        r = subprocess.run([LRL, "-q", "lm", "build", str(SHARED / "lm-text" / "yo.txt"), "--vocab", str(tmp / "vocab"),
                            "--oov", "strip-marks", "--out", str(tmp / name), *extra], check=True, capture_output=True, text=True)
        return r.stdout.strip().splitlines()[-1].split(" in ")[0]

    word_lm = build("lm", "--order", "3")
    build("lm-lex", "--order", "3", "--lexicon", str(SHARED / "yo-cv" / "train.tsv"))
    shutil.copytree(tmp / "lm-lex", tmp / "lm-uni")  # reference: the training words as pyctcdecode unigrams
    lexicon = (tmp / "lm-lex" / "language_model" / "lexicon.txt").read_text(encoding="utf-8").split()
    uni_path = tmp / "lm-uni" / "language_model" / "unigrams.txt"
    uni_path.write_text("".join(w + "\n" for w in sorted(set(uni_path.read_text(encoding="utf-8").split()) | set(lexicon))),
                        encoding="utf-8")
    (tmp / "lm-uni" / "language_model" / "lexicon.txt").unlink()
    vocab = Vocab.load(tmp / "vocab")
    norm = Normalizer(vocab.normalizer)
    ms = {r["clip"]: float(r["duration[ms]"]) for r in read_table(SHARED / "yo-cv" / "clip_durations.tsv")[1]}
    split_of, pairs = [], []
    for f in ("dev.tsv", "test.tsv"):
        for r in read_table(SHARED / "yo-cv" / f)[1]:
            t = norm(r["sentence"])
            if t and not vocab.oov_chars(t):
                pairs.append((t, ms[r["path"]]))
                split_of.append(f[:-4])
    refs = [t for t, _ in pairs]
    rng = np.random.default_rng(0)
    logps = [synth_logp(t, int(d / 20), vocab, rng) for t, d in pairs]  # 20 ms frames (conv stride 320)
    frames = sum(len(x) for x in logps)
    files = find_lm(tmp / "lm")
    vocab_words = {w for r in refs for w in r.split()}
    ref_tokens = [w for r in refs for w in r.split()]
    oov_lm = sum(w not in set(read_unigrams(files)) for w in ref_tokens) / len(ref_tokens)
    base = build_ctcdecoder(labels_for_vocab(vocab), str(files.model), unigrams=read_unigrams(files))  # alpha 0.5, beta 1.5
    cores = available_cores()
    beams = [int(b) for b in args.beams.split(",")]

    def run_base(beam: int):
        t0 = time.perf_counter()
        out = [base.decode(x, beam_width=beam) for x in logps]
        return time.perf_counter() - t0, out

    def run_lrl(cfg: DecoderConfig, lm: Path = tmp / "lm", lps=logps):
        dec = CTCDecoder.from_vocab(vocab, lm, cfg)
        _ = dec.key  # load the LM outside the timing, as for the baseline
        t0 = time.perf_counter()
        with dec:  # the pool is started inside the timing and reused for the whole batch
            out = [h.text for h in dec.decode_batch(lps)]
        return time.perf_counter() - t0, out

    n = len(logps)
    lines = [
        f"{n} utterances (yo-cv dev+test transcripts as CTC-shaped log-probs over their real clip durations, "
        f"{frames} frames of 20 ms, 12% of characters acoustically wrong with the right one as runner-up, "
        f"{len(vocab)} tokens); LM: `lrl lm build ../shared/data/lm-text/yo.txt --order 3 --oov strip-marks` "
        f"({word_lm}); training words: {len(lexicon)} from yo-cv train.tsv ({len(set(lexicon) - set(read_unigrams(files)))} "
        f"not among the LM's unigrams); alpha 0.5, beta 1.5 for all. {cores} cores shared with other engineers' jobs (load "
        f"{os.getloadavg()[0]:.1f} at the start); median of {args.repeats} interleaved rounds. Greedy WER: "
        f"{jiwer.wer(refs, [CTCDecoder.from_vocab(vocab).greedy(x).text for x in logps]):.2%}.",
        "",
        "| beam | decoder | utt/s | speed-up vs baseline (median ratio) | WER | same text as baseline |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for beam in beams:
        lm_of = {}
        arms = {
            f"lrl pool over stock pyctcdecode ({cores} workers)": DecoderConfig(backend="pyctcdecode", beam_width=beam),
            "lrl C++, LM unigrams only (closed vocabulary), 1 process": DecoderConfig(backend="flashlight", beam_width=beam, workers=1),
            "lrl C++, LM unigrams + training words, 1 process": DecoderConfig(backend="flashlight", beam_width=beam, workers=1),
            f"lrl C++, LM unigrams + training words, {cores} workers": DecoderConfig(backend="flashlight", beam_width=beam),
            "lrl C++, LM unigrams + training words, every token per frame (beam_size_token 0), 1 process":
                DecoderConfig(backend="flashlight", beam_width=beam, workers=1, beam_size_token=0),
            f"reference: lrl pool over pyctcdecode, training words as unigrams ({cores} workers)": DecoderConfig(backend="pyctcdecode", beam_width=beam),
        }
        for k in arms:
            lm_of[k] = tmp / ("lm-lex" if "training words," in k else "lm-uni" if "reference" in k else "lm")
        times = {"base": []} | {k: [] for k in arms}
        outs = {}
        for _ in range(args.repeats):
            t, outs["base"] = run_base(beam)
            times["base"].append(t)
            for name, cfg in arms.items():
                t, outs[name] = run_lrl(cfg, lm_of[name])
                times[name].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(b / c for b, c in zip(times["base"], times[k], strict=True)) for k in arms}
        wer = {k: jiwer.wer(refs, v) for k, v in outs.items()}
        same = {k: sum(a == b for a, b in zip(outs["base"], outs[k], strict=True)) for k in arms}
        lines.append(f"| {beam} | baseline: pyctcdecode `decode()` serially | {n / med['base']:.1f} | 1.00 | "
                     f"{wer['base']:.2%} | {n}/{n} |")
        lines += [f"| {beam} | {k} | {n / med[k]:.1f} | {ratio[k]:.2f} | {wer[k]:.2%} | {same[k]}/{n} |" for k in arms]
        print("\n".join(lines[-1 - len(arms):]), flush=True)

    # word vs character LMs: same text, each tuned on dev with the C++ backend, WER on test
    dev = [i for i, s in enumerate(split_of) if s == "dev"]
    test = [i for i, s in enumerate(split_of) if s == "test"]
    lms = {"word 3-gram, pyctcdecode": (tmp / "lm", word_lm, "pyctcdecode"),
           "word 3-gram, C++ (LM unigrams only)": (tmp / "lm", word_lm, "flashlight"),
           "word 3-gram + training words, C++": (tmp / "lm-lex", word_lm, "flashlight")}
    for order in (int(o) for o in args.char_orders.split(",") if o):
        lms[f"char {order}-gram, C++"] = (tmp / f"char{order}", build(f"char{order}", "--unit", "char", "--order", str(order)),
                                          "flashlight")
    grid = [(a, b) for a in (0.25, 0.5, 1.0, 1.5) for b in (-1.0, 0.0, 1.5, 3.0)]
    lines += ["", f"Word vs character LMs from the same text (beam 32; alpha/beta picked on the "
              f"{len(dev)} dev utterances from a {len(grid)}-point grid, WER on the {len(test)} test utterances):", "",
              "| LM | n-grams | best (alpha, beta) on dev | dev WER | test WER | test CER | grid time (s) |",
              "|---|---|---|---:|---:|---:|---:|"]
    for name, (path, desc, backend) in lms.items():
        t0 = time.perf_counter()
        dec = CTCDecoder.from_vocab(vocab, path, DecoderConfig(backend=backend, beam_width=32))
        best = None
        with dec:
            for a, b in grid:
                cfg = dec.with_config(alpha=a, beta=b)
                w = jiwer.wer([refs[i] for i in dev], [h.text for h in dec.decode_batch([logps[i] for i in dev], cfg)])
                if best is None or w < best[0]:
                    best = (w, a, b)
            hyp = [h.text for h in dec.decode_batch([logps[i] for i in test], dec.with_config(alpha=best[1], beta=best[2]))]
        tref = [refs[i] for i in test]
        lines.append(f"| {name} | {desc.split('(')[1].split(',')[0] if '(' in desc else desc} ... | ({best[1]:g}, {best[2]:g}) | "
                     f"{best[0]:.2%} | {jiwer.wer(tref, hyp):.2%} | {jiwer.cer(tref, hyp):.2%} | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    tw = set(lexicon) | set(read_unigrams(files))
    oov_both = sum(w not in tw for w in ref_tokens) / len(ref_tokens)
    lines += ["", f"Reference words outside the LM's unigrams: {oov_lm:.1%} of {len(ref_tokens)} ({len(vocab_words)} types); "
              f"outside the unigrams and the training words: {oov_both:.1%}."]
    md = "\n".join(lines + ["", NOTES])
    update_section("decode", md)
    print(md)
    shutil.rmtree(tmp, ignore_errors=True)


NOTES = (
    "The C++ backend is flashlight-text's `LexiconDecoder` (word LM; lexicon = the LM's unigrams, each spelled "
    "with a closing word delimiter) or `LexiconFreeDecoder` (character LM), with lm_weight = alpha * ln 10 and "
    "word_score = beta, so beams are ranked as in pyctcdecode (equal totals on planted cases, tests/test_decode.py). "
    "Differences: merged paths are log-added over all alignments (pyctcdecode sums the beams it kept), and a word "
    "LM decodes a closed vocabulary: the LM's unigrams plus, with `lrl lm build --lexicon TRAIN` (or the train "
    "split next to DATA/vocab), the training transcripts' words, scored as KenLM's <unk> when the LM lacks them; "
    "pyctcdecode spells any word, with unk_score_offset when KenLM lacks it (so listing the training words as its "
    "unigrams changes nothing: the reference row). The C++ search tries the beam_size_token (16) most probable "
    "tokens per frame, pyctcdecode those above token_min_logp. backend=auto picks the C++ search "
    "for a word LM with a lexicon.txt (and for character LMs). Character LMs stop at order 6: KenLM in flashlight-text's wheels (and the kenlm module) is "
    "compiled with KENLM_MAX_ORDER=6; 8- and 10-grams need both rebuilt."
)


if __name__ == "__main__":
    main()
