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


def test_init_tiny_ships_the_default_feature_extractor(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    from lrl.core.audio import default_feature_extractor

    saved = Wav2Vec2FeatureExtractor.from_pretrained(init_tiny(tmp_path / "tiny", "test")).to_dict()
    assert saved == default_feature_extractor().to_dict()
    fe = default_feature_extractor(8000)
    assert (fe.sampling_rate, fe.do_normalize, fe.return_attention_mask, fe.padding_value) == (8000, True, True, 0.0)


def test_check_local_weights_refuses_pickles_and_empty_dirs(tmp_path):
    import pytest

    from lrl.core.io import LrlError
    from lrl.models.checkpoints import check_local_weights

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(LrlError, match="no config.json"):
        check_local_weights(ckpt, allow_pickle=True)
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(LrlError, match="holds no weights"):
        check_local_weights(ckpt, allow_pickle=True)
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(LrlError, match="--allow-pickle"):
        check_local_weights(ckpt, allow_pickle=False)
    check_local_weights(ckpt, allow_pickle=True)
    (ckpt / "model.safetensors").write_bytes(b"")
    check_local_weights(ckpt, allow_pickle=False)
