import logging

import numpy as np
import pytest

from lrl.core.batching import pack_batches, padding_efficiency
from lrl.train.batching import BatchingConfig, DynamicBatchSampler, find_max_seconds


@pytest.fixture
def yo_durations(yo_cv) -> list[float]:
    lines = (yo_cv / "clip_durations.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [int(line.split("\t")[1]) / 1000 for line in lines if line.strip()]


def test_batches_respect_the_padded_seconds_cap_and_cover_every_clip_once(yo_durations):
    batches = pack_batches(yo_durations, max_seconds=30.0, seed=3)
    d = np.asarray(yo_durations)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(yo_durations)))
    for b in batches:
        assert len(b) == 1 or d[b].max() * len(b) <= 30.0


def test_length_grouping_wastes_less_padding_than_random_fixed_batches(yo_durations, rng):
    dyn = pack_batches(yo_durations, max_seconds=40.0)
    perm = rng.permutation(len(yo_durations)).tolist()
    fixed = [perm[i : i + 4] for i in range(0, len(perm), 4)]
    assert padding_efficiency(yo_durations, dyn) > 0.9
    assert padding_efficiency(yo_durations, dyn) > padding_efficiency(yo_durations, fixed) + 0.1


def test_max_batch_size_caps_clip_count():
    batches = pack_batches([1.0] * 50, max_seconds=100.0, max_batch_size=8)
    assert max(len(b) for b in batches) == 8
    assert sum(len(b) for b in batches) == 50


def test_clip_longer_than_cap_gets_its_own_batch_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lrl.core.batching"):
        batches = pack_batches([1.0, 2.0, 50.0, 1.5], max_seconds=10.0)
    assert [2] in batches
    assert "longer than max_seconds" in caplog.text


def test_ranks_get_equal_disjoint_shares_and_epochs_reshuffle(yo_durations):
    cfg = BatchingConfig(max_seconds=30.0, seed=1)
    r0 = DynamicBatchSampler(yo_durations, cfg, num_replicas=2, rank=0)
    r1 = DynamicBatchSampler(yo_durations, cfg, num_replicas=2, rank=1)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == len(r0) == len(r1)
    n_batches = len(r0.batches)
    if n_batches % 2 == 0:  # without wrap-around padding the shares are disjoint
        assert not {tuple(x) for x in a} & {tuple(x) for x in b}
    covered = {i for batch in a + b for i in batch}
    assert covered == set(range(len(yo_durations)))
    first = [tuple(x) for x in r0]
    r0.set_epoch(1)
    second = [tuple(x) for x in r0]
    assert sorted(first) != sorted(second) or first != second  # a new order each epoch
    r0.set_epoch(0)
    assert [tuple(x) for x in r0] == first  # deterministic per epoch (resume replays the same order)


def test_costliest_batch_comes_first_on_every_rank(yo_durations):
    d = np.asarray(yo_durations)
    cfg = BatchingConfig(max_seconds=30.0, seed=5)
    samplers = [DynamicBatchSampler(yo_durations, cfg, num_replicas=2, rank=r) for r in (0, 1)]
    costs = sorted((d[b].max() ** 2 * len(b) for b in samplers[0].batches), reverse=True)  # ~ B x T^2
    for s in samplers:
        s.set_epoch(3)
        first = next(iter(s))
        assert d[first].max() ** 2 * len(first) in costs[:2]


def test_sampler_feeds_a_dataloader(yo_durations):
    import torch

    ds = list(range(len(yo_durations)))
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=DynamicBatchSampler(yo_durations, BatchingConfig(max_seconds=20.0)), collate_fn=list
    )
    got = sorted(i for batch in loader for i in batch)
    assert got == ds


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(max_seconds=0), "max_seconds"), (dict(max_batch_size=-1), "max_batch_size")],
)
def test_batching_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchingConfig(**kwargs)


def test_sampler_rank_validation():
    with pytest.raises(ValueError, match="rank"):
        DynamicBatchSampler([1.0], num_replicas=2, rank=2)


def test_batch_size_finder_grows_with_the_budget_and_refuses_too_little(tmp_path):
    from lrl.models.checkpoints import init_tiny, load_for_ctc

    model = load_for_ctc(init_tiny(tmp_path / "m", "test"), 10)
    model.freeze_feature_encoder()
    small = find_max_seconds(model, budget_bytes=64 * 2**20, clip_seconds=2.0)
    big = find_max_seconds(model, budget_bytes=256 * 2**20, clip_seconds=2.0)
    assert small.bytes_per_second > 0
    assert big.max_seconds > small.max_seconds > 2.0
    with pytest.raises(ValueError, match="budget"):
        find_max_seconds(model, budget_bytes=1000, clip_seconds=2.0)
    with pytest.raises(ValueError, match="memory_fraction"):
        find_max_seconds(model, memory_fraction=0)
