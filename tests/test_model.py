from lrl.models.checkpoints import init_tiny, tiny_config


def test_init_tiny_writes_a_loadable_pretraining_checkpoint(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    out = init_tiny(tmp_path / "tiny", "test")
    assert (out / "model.safetensors").is_file()
    m = Wav2Vec2ForPreTraining.from_pretrained(out)
    assert m.config.do_stable_layer_norm and m.config.feat_extract_norm == "layer"
    # total conv stride 320: 20 ms frames at 16 kHz, like XLS-R
    stride = 1
    for s in m.config.conv_stride:
        stride *= s
    assert stride == 320
    assert Wav2Vec2FeatureExtractor.from_pretrained(out).sampling_rate == 16000


def test_tiny_config_overrides_and_validation():
    import pytest

    assert tiny_config("small").hidden_size == 256
    assert tiny_config("test", num_hidden_layers=3).num_hidden_layers == 3
    with pytest.raises(ValueError, match="size"):
        tiny_config("huge")
