"""lrl.core.hf_transformers against transformers' own private helpers on tiny models: a rename or a changed
formula in transformers fails here, not in a training run."""

from __future__ import annotations

import numpy as np
import pytest

from lrl.core import hf_transformers as hf
from lrl.models.checkpoints import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ctc():
    import torch
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(0)
    return Wav2Vec2ForCTC(tiny_config("test", vocab_size=12, adapter_attn_dim=8))


@pytest.mark.parametrize("overrides", [{}, {"add_adapter": True, "num_adapter_layers": 2, "adapter_stride": 2,
                                             "output_hidden_size": 32}])
def test_conv_output_lengths_match_transformers(overrides):
    import torch
    from transformers import Wav2Vec2Model

    model = Wav2Vec2Model(tiny_config("test", **overrides))
    n = torch.tensor([1, 399, 400, 401, 720, 16000, 16321, 48000])
    for add_adapter in (None, False, True):
        want = model._get_feat_extract_output_lengths(n, add_adapter=add_adapter)
        assert torch.equal(hf.conv_output_lengths(n, model.config, add_adapter), want)
        got_np = hf.conv_output_lengths(n.numpy(), model.config, add_adapter)
        assert isinstance(got_np, np.ndarray) and got_np.tolist() == want.tolist()
        assert hf.conv_output_lengths(16000, model.config, add_adapter) == int(want[5])


def test_frame_attention_mask_matches_transformers(ctc):
    import torch

    mask = torch.zeros(3, 16000, dtype=torch.long)
    for b, n in enumerate((16000, 9000, 3201)):
        mask[b, :n] = 1
    frames = int(hf.conv_output_lengths(16000, ctc.config))
    want = ctc.wav2vec2._get_feature_vector_attention_mask(frames, mask, add_adapter=False)
    got = hf.frame_attention_mask(frames, mask, ctc.config, add_adapter=False)
    assert got.dtype == torch.bool and torch.equal(got, want)


def test_mask_and_negative_samplers_are_transformers_own():
    from transformers.models.wav2vec2 import modeling_wav2vec2 as m

    np.random.seed(3)
    want = m._compute_mask_indices((2, 50), 0.5, 4, min_masks=2)
    np.random.seed(3)
    got = hf.compute_mask_indices((2, 50), 0.5, 4, min_masks=2)
    assert got.dtype == bool and got.shape == (2, 50) and np.array_equal(got, want) and got.any()
    np.random.seed(4)
    want_neg = m._sample_negative_indices((2, 50), 5, mask_time_indices=got)
    np.random.seed(4)
    neg = hf.sample_negative_indices((2, 50), 5, mask_time_indices=got)
    assert neg.shape == (2, 50, 5) and np.array_equal(neg, want_neg)


def test_set_front_end_trainable_is_the_flag_freeze_feature_encoder_sets(ctc):
    fe = ctc.wav2vec2.feature_extractor
    before = fe._requires_grad
    try:
        ctc.freeze_feature_encoder()
        assert fe._requires_grad is False
        hf.set_front_end_trainable(ctc, True)
        assert fe._requires_grad is True
        hf.set_front_end_trainable(ctc, False)
        assert fe._requires_grad is False
    finally:
        fe._requires_grad = before
        for p in fe.parameters():
            p.requires_grad_(True)


def test_adapter_state_dict_is_what_transformers_lists(ctc):
    got, want = hf.adapter_state_dict(ctc), ctc._get_adapters()
    assert list(got) == list(want) and any(".adapter_layer." in k for k in got) and "lm_head.weight" in got
    assert all(got[k] is want[k] for k in want)
