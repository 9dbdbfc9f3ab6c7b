"""Tuning the LM weights on cached dev log-probs: `tune_grid` searches (alpha, beta) on a coarse grid, refines
around the best point in rounds of halving steps (more rounds when the C++ backend makes points cheap) and
then picks the beam width, in parallel over the decoder's process pool; `plot_heatmap` draws the tuned
metric over the grid; `tune` runs both on a split for one LM or several (word vs char: the best dev score
wins) and writes MODEL/decoder.json (and installs the tuned LM into the model directory). The metric is WER,
or CER (`metric="cer"`) where words are not what counts: scripts written without spaces between words (Thai,
Lao, Khmer, Burmese, Chinese, Japanese), and transcripts that become CTC training targets (pseudo-labels).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from lrl.core.io import LrlError, atomic_write_text
from lrl.decode.constants import DEFAULT_ALPHA, DEFAULT_BETA
from lrl.evaluate.inference import load_decoder, split_log_probs, warn_if_flat
from lrl.evaluate.scoring import EvaluateConfig, score

Metric = Literal["wer", "cer"]
METRICS: tuple[Metric, ...] = get_args(Metric)
OTHER: dict[str, Metric] = {"wer": "cer", "cer": "wer"}  # the metric that breaks ties of the tuned one


@dataclass(frozen=True)
class TuneConfig:
    """The (alpha, beta) grid and beam widths `tune_grid` searches."""

    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)  # LM weights of the coarse grid
    betas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0)  # word insertion bonuses of the coarse grid
    refine: bool = True  # then 3x3 grids around the best point, the first at half the coarse steps
    refine_rounds: int = 0  # such grids, each at half the previous step around the best so far (a pattern
    # search); 0 = auto: AUTO_ROUNDS_FAST with the C++ backend (about 10x cheaper per point in bench/decode.py),
    # 1 with pyctcdecode
    grid_beam: int = 32  # beam width during the grid search (the LM weights matter more than the beam)
    beam_widths: tuple[int, ...] = (16, 32, 64, 100)  # tried at the best (alpha, beta); the smallest
    # within `beam_tolerance` of the best score wins
    beam_tolerance: float = 0.0  # absolute WER (CER) a smaller beam may lose and still be chosen
    workers: int = 0  # processes (each inherits the loaded LM); 0 = all cores
    metric: Metric = "wer"  # what the search minimises (the other one breaks ties)

    def __post_init__(self) -> None:
        if not self.alphas or not self.betas:
            raise ValueError(f"alphas and betas must be non-empty, got {self.alphas} / {self.betas}")
        if min(self.alphas) < 0:
            raise ValueError(f"alphas must be >= 0, got {self.alphas}")
        if self.grid_beam < 1 or not self.beam_widths or min(self.beam_widths) < 1:
            raise ValueError(f"grid_beam and beam_widths must be >= 1, got {self.grid_beam} / {self.beam_widths}")
        if self.beam_tolerance < 0:
            raise ValueError(f"beam_tolerance must be >= 0, got {self.beam_tolerance}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        if self.refine_rounds < 0:
            raise ValueError(f"refine_rounds must be >= 0 (0 = auto), got {self.refine_rounds}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")


AUTO_ROUNDS_FAST = 3  # refinement rounds with the C++ backend: 1 + 3x8 points more than the pyctcdecode search


@dataclass(frozen=True)
class TunePoint:
    alpha: float
    beta: float
    beam_width: int
    wer: float
    cer: float
    seconds: float  # decoding wall time of the whole dev set at this point

    def score(self, metric: Metric) -> float:
        return self.wer if metric == "wer" else self.cer

    def rank(self, metric: Metric) -> tuple[float, float]:
        """Sort key: the tuned metric, then the other (rounded, so float noise never decides)."""
        return round(self.score(metric), 9), round(self.score(OTHER[metric]), 9)


@dataclass
class TuneResult:
    greedy_wer: float
    default: TunePoint  # pyctcdecode's defaults (0.5, 1.5) at the grid beam
    coarse: list[TunePoint]
    fine: list[TunePoint]
    beams: list[TunePoint]
    best: TunePoint
    lm: str = ""  # the LM tuned (its path)
    backend: str = ""  # the beam search that decoded it ("flashlight" or "pyctcdecode")
    seconds: float = 0.0  # wall time of the whole search
    greedy_cer: float = float("nan")
    metric: Metric = "wer"  # what `best` minimises

    def greedy(self, metric: Metric) -> float:
        return self.greedy_wer if metric == "wer" else self.greedy_cer

    def grid(self, points: list[TunePoint]) -> tuple[list[float], list[float], np.ndarray]:
        alphas = sorted({p.alpha for p in points})
        betas = sorted({p.beta for p in points})
        m = np.full((len(betas), len(alphas)), np.nan)
        for p in points:
            m[betas.index(p.beta), alphas.index(p.alpha)] = p.score(self.metric)
        return alphas, betas, m


# Dev log-probs registered before the pool forks (workers inherit them with the LM).
_TUNE_DATA: dict[str, tuple] = {}


def _tune_point(args: tuple) -> TunePoint:
    from lrl.decode.decoder import _beam_search

    key, data_key, params = args
    prepared, refs, norm = _TUNE_DATA[data_key]
    t0 = time.perf_counter()
    hyps = [norm(_beam_search(key, params, lp, idx)[0]) or "" if len(lp) else "" for lp, idx in prepared]
    s = score(refs, hyps)
    return TunePoint(float(params[0]), float(params[1]), int(params[4]), s.wer, s.cer, time.perf_counter() - t0)


def _best(points: list[TunePoint], metric: Metric = "wer") -> TunePoint:
    return min(points, key=lambda p: (*p.rank(metric), abs(p.alpha - 0.5) + abs(p.beta - 1.5)))


def tune_grid(decoder, logps: list[np.ndarray], refs: list[str], config: TuneConfig | None = None,
              normalizer=None) -> TuneResult:
    """Grid-search alpha/beta (then beam width) of `decoder` (a CTCDecoder with an LM) on dev log-probs.
    Points run in parallel over the decoder's process pool; every worker inherits the LM loaded once."""
    import os
    from dataclasses import replace

    config = config or TuneConfig()
    if not decoder.has_lm:
        raise LrlError("tuning needs a language model: pass --lm DIR (from `lrl lm build`)")
    t0 = time.perf_counter()
    norm = normalizer or (lambda t: " ".join(t.split()))
    base = replace(decoder.config, beam_width=config.grid_beam)
    decoder.close()  # a pool forked earlier would not see the dev data registered below
    key = decoder.key  # builds the decoder (loads the LM) before any fork
    data_key = os.urandom(8).hex()
    _TUNE_DATA[data_key] = ([decoder._prepare(lp, base) for lp in logps], list(refs), norm)
    try:
        greedy = score(list(refs), [norm(decoder.greedy(lp).text) or "" for lp in logps])

        def run(points: list[tuple[float, float, int]]) -> list[TunePoint]:
            tasks = [(key, data_key, decoder._params(replace(base, alpha=float(a), beta=float(b), beam_width=w)))
                     for a, b, w in points]
            return decoder.map_pool(_tune_point, tasks, workers=config.workers)

        coarse_pts = [(a, b, config.grid_beam) for b in config.betas for a in config.alphas]
        default_pt = (DEFAULT_ALPHA, DEFAULT_BETA, config.grid_beam)
        todo = coarse_pts + ([default_pt] if default_pt not in coarse_pts else [])
        done = run(todo)
        coarse = done[: len(coarse_pts)]
        default = next(p for p in done if (p.alpha, p.beta) == (DEFAULT_ALPHA, DEFAULT_BETA))
        best = _best(coarse, config.metric)
        fine: list[TunePoint] = []
        rounds = (config.refine_rounds or (AUTO_ROUNDS_FAST if decoder.backend == "flashlight" else 1)) if config.refine else 0
        da, db = _step(config.alphas), _step(config.betas)
        for _ in range(rounds):
            da, db = da / 2, db / 2
            pts = [(round(best.alpha + i * da, 4), round(best.beta + j * db, 4), config.grid_beam)
                   for j in (-1, 0, 1) for i in (-1, 0, 1) if best.alpha + i * da >= 0]
            done_at = {(p.alpha, p.beta): p for p in coarse + fine}
            fine += run([p for p in pts if (p[0], p[1]) not in done_at])
            fine += [done_at[(a, b)] for a, b, _ in pts if (a, b) in done_at and done_at[(a, b)] not in fine]
            best = _best(coarse + fine, config.metric)
        beams = run([(best.alpha, best.beta, w) for w in sorted(set(config.beam_widths))])
        top = min(p.score(config.metric) for p in beams)
        chosen = min((p for p in beams if p.score(config.metric) <= top + config.beam_tolerance),
                     key=lambda p: p.beam_width)
        return TuneResult(greedy.wer, default, coarse, fine, beams, chosen, str(decoder.lm_path), decoder.backend,
                          time.perf_counter() - t0, greedy_cer=greedy.cer, metric=config.metric)
    finally:
        _TUNE_DATA.pop(data_key, None)
        decoder.close()


def _step(values: tuple[float, ...]) -> float:
    v = sorted(set(values))
    return min(b - a for a, b in zip(v, v[1:], strict=False)) if len(v) > 1 else 1.0


def plot_heatmap(result: TuneResult, path: str | Path, title: str = "") -> Path:
    """The tuned metric (WER or CER) over (alpha, beta): the coarse grid, and the refined grid beside it; the
    best point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("coarse grid", result.coarse)] + ([("refined grid", result.fine)] if result.fine else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5), squeeze=False)
    metric = result.metric
    name_m = metric.upper()
    vmin = min(p.score(metric) for _, pts in panels for p in pts)
    vmax = max(p.score(metric) for _, pts in panels for p in pts)
    for ax, (name, pts) in zip(axes[0], panels, strict=True):
        alphas, betas, m = result.grid(pts)
        im = ax.imshow(m * 100, origin="lower", cmap="viridis_r", aspect="auto", vmin=vmin * 100, vmax=vmax * 100)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel("alpha (LM weight)")
        ax.set_ylabel("beta (word insertion bonus)")
        ax.set_title(f"dev {name_m} %, {name} (beam {pts[0].beam_width})")
        for (r, c), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(c, r, f"{v * 100:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v > (vmin + vmax) / 2 else "black")
        b = result.best
        if b.alpha in alphas and b.beta in betas:
            from matplotlib.patches import Rectangle

            c, r = alphas.index(b.alpha), betas.index(b.beta)
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3,
                                   label=f"best: alpha={b.alpha:g}, beta={b.beta:g}"))
            ax.plot(c + 0.32, r + 0.3, marker="*", color="red", markersize=12, markeredgecolor="white")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
        fig.colorbar(im, ax=ax, label=f"{name_m} %")
    greedy = result.greedy(metric)
    fig.suptitle(title or (f"{name_m}: greedy {greedy:.1%} | defaults ({DEFAULT_ALPHA:g}, {DEFAULT_BETA:g}) "
                           f"{result.default.score(metric):.1%} | best {result.best.score(metric):.1%} at "
                           f"alpha={result.best.alpha:g}, beta={result.best.beta:g}, "
                           f"beam {result.best.beam_width}"), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tune(model_dir: str | Path, data_dir: str | Path, lm: str | Path | Sequence[str | Path] | None = None,
         split: str = "dev", config: TuneConfig | None = None, install: bool = True, cache: bool = True,
         allow_pickle: bool = False) -> tuple[TuneResult, Path]:
    """Tune on the cached log-probs of `split`; write MODEL/decoder.json (lm, alpha, beta, beam, dev WER
    before/after), MODEL/tune-<split>/{grid.tsv, heatmap.png}, and with `install` copy the LM into
    MODEL/language_model/ with the tuned attrs.json (+ MODEL/alphabet.json) so Wav2Vec2ProcessorWithLM and
    `lrl evaluate` use it. decoder.json records the LM's identity (`lm_identity`): another LM does not get
    these values. `allow_pickle` also loads pickle weights (only from sources you trust). Several `lm`s (e.g. a
    word and a character LM from the same text) are each tuned and the lowest dev `config.metric` (then the
    other) wins; all are listed in MODEL/tune-<split>/lms.tsv and decoder.json's `lm_candidates`."""
    from lrl.core.text import Normalizer
    from lrl.data.shards import refuse_shard
    from lrl.data.vocab import Vocab
    from lrl.decode.decoder import lm_identity, write_decoder_json
    from lrl.decode.lm import LM_DIR, install_lm

    config = config or TuneConfig()
    model_dir = Path(model_dir)
    refuse_shard(data_dir, "tune on")  # one shard of n: alpha/beta fitted to 1/n of the split
    logps = split_log_probs(model_dir, data_dir, EvaluateConfig(split=split, cache=cache, allow_pickle=allow_pickle))
    vocab = Vocab.load(model_dir)
    norm = Normalizer(vocab.normalizer)
    keep = [i for i, r in enumerate(logps.refs) if norm(r)]
    warn_if_flat([logps.logps[i] for i in keep])
    lms = [lm] if lm is None or isinstance(lm, (str, Path)) else list(lm)
    if not lms:
        raise LrlError("no LM to tune: pass --lm DIR (repeat it to compare word and character LMs)")
    results: list[tuple[TuneResult, object]] = []
    for one in lms:
        decoder = load_decoder(model_dir, lm=one, workers=config.workers)
        results.append((tune_grid(decoder, [logps.logps[i] for i in keep], [norm(logps.refs[i]) for i in keep],
                                  config, norm), decoder))
    result, decoder = min(results, key=lambda rd: rd[0].best.rank(config.metric))
    lm_source = decoder.lm_path
    out = model_dir / f"tune-{split}"
    candidates = [{"lm": r.lm, "backend": r.backend, "alpha": r.best.alpha, "beta": r.best.beta,
                   "beam_width": r.best.beam_width, "wer": r.best.wer, "cer": r.best.cer,
                   "points": len(r.coarse) + len(r.fine) + len(r.beams) + 1, "seconds": round(r.seconds, 3)}
                  for r, _ in results]
    if len(results) > 1:
        keys = list(candidates[0])
        atomic_write_text(out / "lms.tsv", "\n".join(["\t".join(keys)] + [
            "\t".join(f"{c[k]:.6f}" if isinstance(c[k], float) and k in ("wer", "cer") else str(c[k]) for k in keys)
            for c in candidates]) + "\n")
    rows = ["pass\talpha\tbeta\tbeam_width\twer\tcer\tseconds"]
    for name, pts in (("coarse", result.coarse), ("fine", result.fine), ("beam", result.beams), ("default", [result.default])):
        rows += [f"{name}\t{p.alpha:g}\t{p.beta:g}\t{p.beam_width}\t{p.wer:.6f}\t{p.cer:.6f}\t{p.seconds:.3f}" for p in pts]
    atomic_write_text(out / "grid.tsv", "\n".join(rows) + "\n")
    plot_heatmap(result, out / "heatmap.png")
    b = result.best
    cfg = decoder.with_config(alpha=b.alpha, beta=b.beta, beam_width=b.beam_width)
    lm_record = str(lm_source)
    if install:
        install_lm(lm_source, model_dir, vocab, b.alpha, b.beta, cfg.unk_score_offset)
        lm_record = str(model_dir / LM_DIR)
    write_decoder_json(
        model_dir, cfg, lm=lm_record, lm_source=str(lm_source), lm_identity=lm_identity(lm_source),
        tuned_on=f"{data_dir}:{split}", n_utterances=len(keep),
        tuned_for=config.metric,
        dev_wer={"greedy": result.greedy_wer, "defaults_0.5_1.5": result.default.wer, "tuned": b.wer},
        dev_cer={"greedy": result.greedy_cer, "defaults_0.5_1.5": result.default.cer, "tuned": b.cer},
        tuned_backend=result.backend,
        **({"lm_candidates": candidates} if len(results) > 1 else {}),
    )
    return result, out
