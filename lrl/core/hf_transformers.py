"""The one place lrl touches transformers' private Wav2Vec2 internals, or recomputes what they compute.

transformers has no public API for these, and lrl needs them outside the model's own forward pass:
- conv front-end output lengths (`Wav2Vec2Model._get_feat_extract_output_lengths`) and the frame-level
  attention mask (`_get_feature_vector_attention_mask`): recomputed here from the public config fields
  (`conv_kernel`, `conv_stride`, `adapter_stride`, `num_adapter_layers`), no private call;
- SpecAugment's span masks and pretraining's negatives (`_compute_mask_indices`, `_sample_negative_indices`,
  module functions of `modeling_wav2vec2`): called, because pretraining and the augmentation preview must
  draw exactly what the model itself would;
- the feature encoder's frozen flag (`Wav2Vec2FeatureEncoder._requires_grad`: `freeze_feature_encoder()`
  sets it, nothing public unsets it): set here;
- the MMS adapter weights (`_get_adapters()`; `load_adapter` is public, saving is not): recomputed from
  parameter names.
Checked against transformers 5.24.0 (pyproject allows >=5.0,<6); tests/test_hf_transformers.py runs every
function on a tiny model against transformers' own, so a rename or a changed formula fails there, not in a
training run. transformers is imported inside the functions that need it.
"""

from __future__ import annotations


def conv_output_lengths(lengths, config, add_adapter: bool | None = None):
    """Encoder frames for inputs of `lengths` samples (an int, a NumPy array or a torch tensor; the same
    type comes back): each conv layer gives floor((n - kernel) / stride) + 1, as in torch.nn.Conv1d, and
    so does each adapter layer (kernel 1, `adapter_stride`) when `add_adapter` (default: the config's).
    Non-positive results mean the input is shorter than one frame."""
    add_adapter = config.add_adapter if add_adapter is None else add_adapter
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        lengths = (lengths - kernel) // stride + 1
    if add_adapter:
        for _ in range(config.num_adapter_layers):
            lengths = (lengths - 1) // config.adapter_stride + 1
    return lengths


def frame_attention_mask(num_frames: int, attention_mask, config, add_adapter: bool | None = None):
    """The boolean (batch x `num_frames`) mask of encoder frames that come from real samples, for a
    right-padded sample-level `attention_mask` (torch, batch x samples)."""
    import torch

    valid = conv_output_lengths(attention_mask.sum(-1).to(torch.long), config, add_adapter)
    return torch.arange(num_frames, device=attention_mask.device)[None, :] < valid[:, None]


def compute_mask_indices(shape: tuple[int, int], mask_prob: float, mask_length: int, attention_mask=None,
                         min_masks: int = 0):
    """transformers' SpecAugment span sampler (a bool NumPy array of `shape`), drawn from NumPy's global RNG."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    return _compute_mask_indices(shape, mask_prob, mask_length, attention_mask=attention_mask, min_masks=min_masks)


def sample_negative_indices(features_shape: tuple[int, int], num_negatives: int, mask_time_indices=None):
    """transformers' sampler of contrastive negatives for wav2vec 2.0 pretraining (NumPy's global RNG)."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

    return _sample_negative_indices(features_shape, num_negatives, mask_time_indices=mask_time_indices)


def set_front_end_trainable(model, trainable: bool) -> None:
    """Set the feature encoder's own frozen flag (the conv input then requires grad in training, which
    gradient checkpointing needs). The parameters' `requires_grad` are the caller's business."""
    model.wav2vec2.feature_extractor._requires_grad = bool(trainable)


def adapter_state_dict(model) -> dict:
    """What `load_adapter` reads for an MMS adapter: every attention-adapter parameter and the CTC head,
    by name (the tensors themselves, not copies)."""
    return {name: p for name, p in model.named_parameters() if ".adapter_layer." in name or name.startswith("lm_head.")}
