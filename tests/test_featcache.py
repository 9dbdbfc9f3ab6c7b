import numpy as np
import pytest
import yaml

from lrl.core.text import NormalizerConfig
from lrl.data.vocab import Vocab
from lrl.models.checkpoints import load_for_ctc
from lrl.train.collate import CTCCollator
from lrl.train.config import TrainConfig
from lrl.train.featcache import (
    CachedFeatureCollator,
    build_feature_cache,
    cache_blocker,
    cached_front_end,
    estimate_bytes,
)
from lrl.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(rng, n=5):
    """Clips of different lengths (so batches pad) with short transcripts."""
    words = ["one", "two", "three", "four", "five"]
    return [{"audio": rng.normal(0, 0.1, int(16000 * d)).astype(np.float32), "text": words[i % 5]}
            for i, d in enumerate(rng.uniform(0.4, 1.6, n))]


def test_cached_features_give_the_same_loss_and_gradients_as_waveforms(tiny_ckpt, rng):
    import torch

    rows = _rows(rng)
    vocab = Vocab.from_chars("onetwhrfuiv", NormalizerConfig())
    base = CTCCollator(vocab)
    model = load_for_ctc(tiny_ckpt, len(vocab), mask_time_prob=0.5, mask_time_length=2)  # SpecAugment on: masks must match
    model.freeze_feature_encoder()
    model.train()
    cache = build_feature_cache(model, rows, [len(r["audio"]) / 16000 for r in rows], base, max_seconds=2.5)
    assert [f.shape[1] for f in cache.feats] == model.wav2vec2._get_feat_extract_output_lengths(
        torch.tensor([len(r["audio"]) for r in rows])).tolist()
    assert cache.nbytes == sum(f.nbytes for f in cache.feats)

    def loss_and_grads(batch):
        model.zero_grad()
        np.random.seed(0)  # transformers draws the SpecAugment spans with numpy
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    order = [3, 0, 4, 1]  # a batch mixing lengths, in the order the sampler might give
    raw = loss_and_grads(base([rows[i] for i in order]))
    cached_batch = CachedFeatureCollator(cache, base)([{"row": i, "text": rows[i]["text"]} for i in order])
    assert cached_batch["input_values"].dim() == 3
    encoder, keys = model.wav2vec2.feature_extractor, list(model.state_dict())
    with cached_front_end(model):
        cached = loss_and_grads(cached_batch)
        assert list(model.state_dict()) == keys  # a checkpoint saved meanwhile has the model's own keys
    assert cached[0] == pytest.approx(raw[0], rel=1e-5)
    assert len(cached[1]) == len(raw[1]) > 0
    for a, b in zip(cached[1], raw[1], strict=True):  # equal up to float rounding (batching differs in the build)
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-8  # (some are zero up to rounding)
    assert "forward" not in vars(model.wav2vec2.feature_extractor)  # the bypass is gone after the block
    assert model.wav2vec2.feature_extractor is encoder


@pytest.mark.parametrize(("kw", "match"), [
    (dict(freeze_feature_encoder=False), "feature encoder trains"),
    (dict(unfreeze_conv_at=100), "unfreeze at update 100"),
    (dict(augment="light"), "waveform augmentation"),
    (dict(world_size=2), "2 processes"),
    (dict(planned_epochs=1.0), "1.0 epochs"),
    (dict(feat_extract_norm="group"), "depends on batch padding"),
    (dict(n_gpu=2), "DataParallel"),
])
def test_cache_is_refused_when_it_would_be_wrong_or_not_pay(kw, match):
    args = dict(freeze_feature_encoder=True, unfreeze_conv_at=-1, augment="none", world_size=1, planned_epochs=10.0)
    assert cache_blocker(**args) is None
    assert match in cache_blocker(**{**args, **kw})


def test_estimate_matches_a_built_cache(tiny_ckpt, rng):
    rows = _rows(rng, 3)
    vocab = Vocab.from_chars("onetwhrfuiv", NormalizerConfig())
    model = load_for_ctc(tiny_ckpt, len(vocab))
    cache = build_feature_cache(model, rows, [len(r["audio"]) / 16000 for r in rows], CTCCollator(vocab))
    est = estimate_bytes(model.config, sum(len(r["audio"]) for r in rows))
    assert abs(est - cache.nbytes) <= 4 * model.config.conv_dim[-1] * 3 * 2  # a frame or two per clip of rounding


def test_training_with_and_without_the_cache_ends_at_the_same_weights(tiny_ckpt, tmp_path, shared_data):
    import torch
    from corpus_fixtures import make_fsdd_dataset
    from safetensors.torch import load_file

    data = make_fsdd_dataset(shared_data / "fsdd", tmp_path / "fsdd", n_train=8, n_dev=2, n_test=2)
    runs, lr, steps = {}, 1e-3, 6
    for cache in (True, False):
        cfg = TrainConfig.from_dict({
            "output_dir": str(tmp_path / f"run-{cache}"), "threads": 1,
            # no dev split: the final test evaluation must still get waveforms, not the cached collator
            "data": {"path": str(data), "cache_features": cache, "eval_split": "", "test_split": "test"},
            "model": {"checkpoint": str(tiny_ckpt), "spec_augment": "none"},
            "optim": {"max_steps": steps, "lr": lr, "warmup_steps": 1},
            "batching": {"max_seconds": 3.0},
            "eval": {"save_total_limit": 1, "logging_steps": 1},
        })
        assert "test_wer" in train(cfg).metrics
        runs[cache] = load_file(str(tmp_path / f"run-{cache}" / "model.safetensors"))
        note = yaml.safe_load((tmp_path / f"run-{cache}" / "train_config.yaml").read_text())
        used = note["resolved"]["feature_cache"]  # the resolved config says whether the cache was used
        assert used.startswith("8 clips") if cache else used.startswith("off")
    assert runs[True].keys() == runs[False].keys()
    start = load_file(str(tiny_ckpt / "model.safetensors"))
    # Compare each tensor's *change* from the start, not its value: a parameter whose true gradient is 0
    # (e.g. attention key biases, which softmax ignores) moves by float noise whose size depends on the
    # CPU's instruction set and summation order. Adam moves a parameter by at most ~lr per update, so
    # 1e-3 of lr * steps is a floor far above that noise and far below any real movement.
    for k in runs[True]:
        a, b = runs[True][k], runs[False][k]
        w0 = start.get(k, torch.zeros_like(b)).to(b.dtype)
        moved = (b - w0).abs().max()
        assert (a - b).abs().max() <= 1e-3 * max(float(moved), lr * steps), k
    assert any(not torch.equal(runs[True][k], start.get(k, runs[True][k]))
               for k in runs[True] if k.startswith("wav2vec2.encoder"))  # training did move the weights
