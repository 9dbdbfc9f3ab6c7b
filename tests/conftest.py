"""Shared fixtures: paths to ../shared/data, a seeded RNG, a CLI runner, one torch thread, a tiny checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LRL_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def yo_cv(shared_data) -> Path:
    return shared_data / "yo-cv"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from lrl.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread when the cores are shared (OpenMP spin-waits); restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A randomly initialised `test`-size Wav2Vec2ForPreTraining checkpoint directory."""
    from lrl.models.checkpoints import init_tiny

    return init_tiny(tmp_path_factory.mktemp("ckpt") / "tiny", "test")


def nan_pretrain_forward():
    """`lrl.train.pretrain._forward` (as it is now) with every loss multiplied by NaN, what a batch of NaN clips
    gives: install it with monkeypatch to drive pretraining's non-finite-loss handling."""
    import lrl.train.pretrain as pretrain

    real = pretrain._forward

    def poisoned(net, batch):
        out = real(net, batch)
        out.loss = out.loss * float("nan")
        return out

    return poisoned
