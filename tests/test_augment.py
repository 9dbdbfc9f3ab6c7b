"""Waveform augmentation (presets, determinism, lengths, workers, train-only), SpecAugment presets and
their validation on a real Wav2Vec2ForCTC forward pass, config errors, and the preview CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from lrl.augment.specaugment import SPEC_PRESETS, SpecAugmentConfig, feature_frames, min_samples_for_frames
from lrl.augment.wave import (
    WAVE_PRESETS,
    BackgroundNoiseConfig,
    NoiseConfig,
    ReverbConfig,
    SpeedConfig,
    WaveAugmentConfig,
    WaveAugmenter,
)

SR = 16000
SHORT_CLIPS = ("common_voice_yo_738166103.mp3", "common_voice_yo_3750597333.mp3")  # 1.5 s each


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    from tests.conftest import SHARED_DATA

    paths = [SHARED_DATA / "yo-cv" / "clips" / name for name in SHORT_CLIPS]
    if not all(p.is_file() for p in paths):
        pytest.skip("yo-cv clips not found")
    from lrl.core.audio import load_audio

    return [load_audio(p, SR) for p in paths]


def _all_noise(p: float = 1.0) -> WaveAugmentConfig:
    return WaveAugmentConfig(noise=NoiseConfig(p=p, min_snr_db=10.0, max_snr_db=30.0))


# -- waveform augmentation ----------------------------------------------------------------------------
@pytest.mark.parametrize("preset", WAVE_PRESETS)
def test_preset_is_deterministic_under_a_seed_and_keeps_dtype(preset, clips):
    config = WaveAugmentConfig.preset(preset)
    a, b = WaveAugmenter(config, seed=7), WaveAugmenter(config, seed=7)
    outs_a = [a(x, SR) for x in clips * 2]
    outs_b = [b(x, SR) for x in clips * 2]
    for ya, yb in zip(outs_a, outs_b, strict=True):
        assert ya.dtype == np.float32 and ya.ndim == 1
        np.testing.assert_array_equal(ya, yb)
        assert np.isfinite(ya).all()
    other = [WaveAugmenter(config, seed=8)(x, SR) for x in clips * 2]
    if preset == "none":
        assert all(np.array_equal(x, y) for x, y in zip(clips * 2, outs_a, strict=True))
    else:  # a different seed gives a different run
        assert any(len(y) != len(o) or not np.array_equal(y, o) for y, o in zip(outs_a, other, strict=True))


def test_light_speed_changes_length_by_one_of_the_factors(clips):
    aug = WaveAugmenter(WaveAugmentConfig.preset("light"), seed=0)
    seen = set()
    for _ in range(12):
        x = clips[0]
        y = aug(x, SR)
        ratio = len(x) / len(y)
        factor = min((0.9, 1.0, 1.1), key=lambda f: abs(f - ratio))
        assert abs(len(y) - len(x) / factor) <= 1, (len(x), len(y))
        seen.add(factor)
    assert seen == {0.9, 1.0, 1.1}  # 12 draws from 3 factors: all show up with this seed


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_is_kaldi_style_tempo_and_pitch(factor):
    t = np.arange(SR) / SR  # 1 s of a 440 Hz tone
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = WaveAugmenter(WaveAugmentConfig(speed=SpeedConfig(p=1.0, factors=(factor,))), seed=0)(x, SR)
    assert abs(len(y) - len(x) / factor) <= 1  # tempo: length / factor
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * SR / len(y)
    assert abs(peak_hz - 440 * factor) < 3  # pitch: frequency x factor


def test_length_preserving_transforms_keep_the_length(clips):
    config = WaveAugmentConfig.from_dict({
        "pitch": {"p": 1.0}, "noise": {"p": 1.0, "min_f_decay": -6.0, "max_f_decay": 3.0},
        "band_stop": {"p": 1.0}, "low_pass": {"p": 1.0}, "gain": {"p": 1.0},
    })
    aug = WaveAugmenter(config, seed=3)
    for x in clips:
        y = aug(x, SR)
        assert len(y) == len(x) and y.dtype == np.float32
        assert not np.allclose(x, y)
        assert len(aug.last_applied) == 5  # p=1: every transform fired and says what it drew


def test_workers_get_different_draws_and_each_worker_repeats(clips):
    base = WaveAugmenter(_all_noise(), seed=1)
    w0, w1, w1_again = base.for_worker(0), base.for_worker(1), base.for_worker(1)
    a = [w0(clips[0], SR) for _ in range(3)]
    b = [w1(clips[0], SR) for _ in range(3)]
    c = [w1_again(clips[0], SR) for _ in range(3)]
    assert all(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(b, c, strict=True))
    assert not np.array_equal(a[0], a[1])  # successive calls differ too


def test_dataloader_workers_do_not_repeat_each_other(clips):
    import torch
    from torch.utils.data import DataLoader

    x = clips[0][: SR // 2]
    aug = WaveAugmenter(_all_noise(), seed=5)

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(aug(x, SR))

    def run():
        torch.manual_seed(0)
        loader = DataLoader(Clips(), batch_size=1, num_workers=2, multiprocessing_context="fork")
        return [b[0].numpy() for b in loader]

    first, second = run(), run()
    # items 0, 2 come from worker 0 and 1, 3 from worker 1: all four draws must differ
    assert all(not np.array_equal(first[i], first[j]) for i in range(4) for j in range(i + 1, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))  # and the seeded run repeats


def test_global_rngs_are_left_as_they_were(clips):
    random.seed(3), np.random.seed(3)
    expected = (random.random(), np.random.rand())
    random.seed(3), np.random.seed(3)
    WaveAugmenter(WaveAugmentConfig.preset("strong"), seed=0)(clips[0], SR)
    assert (random.random(), np.random.rand()) == expected


def test_reverb_and_background_noise_from_folders(tmp_path, clips, shared_data):
    import soundfile as sf

    rir_dir, noise_dir = tmp_path / "rirs", tmp_path / "noise"
    rir_dir.mkdir(), noise_dir.mkdir()
    decay = np.exp(-np.arange(SR // 4) / (0.05 * SR)) * np.random.default_rng(0).standard_normal(SR // 4)
    sf.write(rir_dir / "room.wav", (decay / np.abs(decay).max()).astype(np.float32), SR)
    from lrl.core.audio import load_audio

    digits = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[:2]  # real speech as babble noise
    for p in digits:  # at 16 kHz: other rates make audiomentations resample with librosa (numba JIT, slow)
        sf.write(noise_dir / p.name, load_audio(p, SR), SR)
    config = WaveAugmentConfig.from_dict({"reverb": {"rir_dir": str(rir_dir), "p": 1.0},
                                          "background": {"noise_dir": str(noise_dir), "p": 1.0}})
    aug = WaveAugmenter(config, seed=0)
    y = aug(clips[0], SR)
    assert len(y) == len(clips[0]) and y.dtype == np.float32 and not np.allclose(y, clips[0])
    assert [s.split()[0] for s in aug.last_applied] == ["reverb", "background"]


def test_mp3_works_with_its_extra_or_says_how_to_install_it(clips):
    config = WaveAugmentConfig.from_dict({"mp3": {"p": 1.0, "min_bitrate": 16, "max_bitrate": 32}})
    try:
        import fast_mp3_augment  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'lrl\[mp3\]'"):
            WaveAugmenter(config)
        return
    aug = WaveAugmenter(config, seed=0)
    y = aug(clips[0], SR)
    assert len(y) == len(clips[0]) and aug.last_applied[0].startswith("mp3")


# -- the config: presets, dict/TOML form, errors ----------------------------------------------------
def test_from_dict_forms_and_round_trip(tmp_path):
    assert WaveAugmentConfig.from_dict({"preset": "light"}) == WaveAugmentConfig.preset("light")
    strong = WaveAugmentConfig.preset("strong")
    assert WaveAugmentConfig.from_dict(strong.to_dict()) == strong
    no_pitch = WaveAugmentConfig.from_dict({"preset": "strong", "pitch": False, "noise": {"p": 0.9}})
    assert no_pitch.pitch is None and no_pitch.noise == NoiseConfig(p=0.9) and no_pitch.speed == strong.speed
    explicit = WaveAugmentConfig.from_dict({"speed": {"factors": [0.95, 1.05]}})
    assert explicit.enabled == ("speed",) and explicit.speed.factors == (0.95, 1.05)
    toml = tmp_path / "run.toml"
    toml.write_text('[augment]\npreset = "light"\n[augment.noise]\np = 0.5\nmin_snr_db = 15\n', encoding="utf-8")
    cfg = WaveAugmentConfig.from_toml(toml)
    assert cfg.noise == NoiseConfig(p=0.5, min_snr_db=15.0) and cfg.speed == SpeedConfig()


@pytest.mark.parametrize(
    "table, match",
    [
        ({"noise": {"p": 1.5}}, r"augment\.noise\.p must be a probability in \[0, 1\], got 1\.5"),
        ({"speed": {"p": -0.1}}, r"augment\.speed\.p must be a probability"),
        ({"noise": {"min_snr_db": 30, "max_snr_db": 10}}, r"augment\.noise\.min_snr_db must be <= max_snr_db"),
        ({"background": {"noise_dir": "/no/such/noise", "min_snr_db": 5}}, r"augment\.background\.noise_dir must be an existing folder"),
        ({"reverb": {"rir_dir": "/no/such/rirs"}}, r"augment\.reverb\.rir_dir must be an existing folder"),
        ({"reverb": {"p": 0.5}}, r"augment\.reverb: .*rir_dir"),
        ({"speed": {"factors": []}}, r"augment\.speed\.factors must be a non-empty list"),
        ({"low_pass": {"max_cutoff_hz": 9000}}, r"augment\.low_pass\.max_cutoff_hz must be in"),
        ({"noise": {"snr": 3}}, r"augment\.noise: unknown field\(s\) \['snr'\]"),
        ({"echo": {}}, r"unknown key\(s\) \['echo'\]"),
        ({"preset": "heavy"}, r"preset must be one of \['none', 'light', 'strong'\], got 'heavy'"),
        ({"noise": 0.5}, r"augment\.noise must be a table"),
    ],
)
def test_bad_config_names_the_field(table, match):
    with pytest.raises(ValueError, match=match):
        WaveAugmentConfig.from_dict(table)


def test_noise_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="noise_dir: no audio files"):
        BackgroundNoiseConfig(noise_dir=str(tmp_path))
    with pytest.raises(ValueError, match="rir_dir must be an existing folder"):
        ReverbConfig(rir_dir=str(tmp_path / "missing"))


def test_augmenter_rejects_bad_input():
    aug = WaveAugmenter(WaveAugmentConfig.preset("light"), seed=0)
    with pytest.raises(ValueError, match="mono"):
        aug(np.zeros((2, 100), dtype=np.float32), SR)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        WaveAugmenter(WaveAugmentConfig.preset("light"), seed=-1)
    with pytest.raises(ValueError, match="worker_id must be >= 0"):
        aug.for_worker(-1)


# -- SpecAugment ----------------------------------------------------------------------------------------
MODEL_FIELDS = {"mask_time_prob", "mask_time_length", "mask_time_min_masks", "mask_feature_prob",
                "mask_feature_length", "mask_feature_min_masks"}


@pytest.mark.parametrize("name", SPEC_PRESETS)
def test_spec_presets_give_wav2vec2_config_fields(name):
    from transformers import Wav2Vec2Config

    kwargs = SpecAugmentConfig.preset(name).to_model_kwargs()
    assert set(kwargs) == MODEL_FIELDS
    cfg = Wav2Vec2Config(**kwargs)
    assert all(getattr(cfg, k) == v for k, v in kwargs.items())


def test_for_hours_and_fairseq_values():
    assert SpecAugmentConfig.for_hours(10 / 60).name == "10min"
    assert SpecAugmentConfig.for_hours(1.2).name == "low-resource"
    assert SpecAugmentConfig.for_hours(100).name == "medium"
    low = SpecAugmentConfig.preset("low-resource")
    assert (low.mask_time_prob, low.mask_feature_prob, low.mask_feature_length) == (0.75, 0.25, 64)
    assert SpecAugmentConfig.preset("hf-default").mask_time_prob == 0.05
    custom = SpecAugmentConfig.from_dict({"preset": "low-resource", "mask_time_prob": 0.5})
    assert custom.mask_time_prob == 0.5 and custom.mask_feature_length == 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mask_time_prob": 1.2}, r"mask_time_prob must be a probability in \[0, 1\], got 1\.2"),
        ({"mask_feature_prob": -0.1}, r"mask_feature_prob must be a probability"),
        ({"mask_time_length": 0}, r"mask_time_length must be an integer >= 1, got 0"),
        ({"mask_feature_min_masks": -1}, r"mask_feature_min_masks must be an integer >= 0"),
    ],
)
def test_bad_specaugment_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpecAugmentConfig(**kwargs)


def test_feature_frames_match_the_model():
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from lrl.models.checkpoints import tiny_config

    for cfg in (tiny_config("test"), Wav2Vec2Config()):
        model = Wav2Vec2Model(cfg) if cfg.hidden_size == 32 else None
        for n in (400, 1305, 1600, 16000, 48123):
            if model is not None:
                assert feature_frames(n, cfg) == int(model._get_feat_extract_output_lengths(torch.tensor(n)))
            f = feature_frames(n, cfg)
            if f > 0:
                m = min_samples_for_frames(f, cfg)
                assert feature_frames(m, cfg) == f and feature_frames(m - 1, cfg) == f - 1


def test_validate_guards_the_short_clip_crash_on_a_real_forward_pass():
    import torch
    from transformers import Wav2Vec2ForCTC

    from lrl.models.checkpoints import tiny_config

    short = 1600  # 0.1 s: 4 frames with the tiny 320x front end
    spec = SpecAugmentConfig.preset("low-resource")
    torch.manual_seed(0)
    x = torch.randn(2, short)
    crashing = Wav2Vec2ForCTC(tiny_config("test", vocab_size=8, **spec.to_model_kwargs())).train()
    with pytest.raises(ValueError, match="mask_length"):  # transformers #14524, unguarded
        crashing(x)

    cfg = tiny_config("test", vocab_size=8)
    with pytest.raises(ValueError, match=r"mask_time_length=10 > 2 \(half of 4 frames"):
        spec.validate_for(cfg, short, strict=True)
    fitted = spec.validate_for(cfg, short)
    assert fitted.mask_time_length == 2 and fitted.mask_time_min_masks == 1 and fitted.mask_feature_length == 16
    model = Wav2Vec2ForCTC(tiny_config("test", vocab_size=8, **fitted.to_model_kwargs())).train()
    assert model(x).logits.shape == (2, 4, 8)
    hidden = torch.randn(2, 4, 32)  # the masking itself still happens
    masked = model.wav2vec2._mask_hidden_states(hidden.clone())
    embed = model.wav2vec2.masked_spec_embed
    assert ((masked == embed) | (masked == 0)).all(-1).any()  # masked frames (embedding, minus zeroed channels)
    assert (masked == 0).all(1).any()  # zeroed feature channels


def test_validate_clamps_min_masks_and_leaves_long_clips_alone(caplog):
    spec = SpecAugmentConfig(mask_time_prob=0.65, mask_time_length=10, mask_time_min_masks=4)
    assert spec.validate(500) is spec
    fitted = spec.validate(50)  # 4 x 10 frames > half of 50 (transformers #15424)
    assert fitted.mask_time_min_masks == 2 and fitted.mask_time_length == 10
    assert "mask_time_min_masks=4" in caplog.text
    with pytest.raises(ValueError, match="min_frames must be >= 1"):
        spec.validate(0)
    # masking switched off: nothing to check, nothing clamped
    assert SpecAugmentConfig.preset("none").validate(3) == SpecAugmentConfig.preset("none")


# -- CLI -------------------------------------------------------------------------------------------------
def test_cli_preview_writes_wavs_and_pictures(cli, tmp_path, yo_cv):
    import matplotlib.image as mpimg
    import soundfile as sf

    clip = yo_cv / "clips" / SHORT_CLIPS[0]
    result = cli("augment", "preview", clip, "--preset", "strong", "--n", "2", "--out", tmp_path, "--seed", "3")
    assert result.exit_code == 0, result.output
    stem = Path(SHORT_CLIPS[0]).stem
    for i in (1, 2):
        info = sf.info(tmp_path / f"{stem}_aug{i}.wav")
        assert info.samplerate == SR and info.frames > 0
        assert mpimg.imread(tmp_path / f"{stem}_aug{i}.png").shape[0] > 400
    assert mpimg.imread(tmp_path / f"{stem}_specaugment.png").shape[1] > 800
    assert "2 augmented clips" in result.output


def test_cli_presets_and_bad_config(cli, tmp_path, yo_cv):
    result = cli("augment", "presets")
    assert result.exit_code == 0 and all(name in result.output for name in (*WAVE_PRESETS, *SPEC_PRESETS))
    bad = tmp_path / "run.toml"
    bad.write_text("[augment.noise]\np = 2.0\n", encoding="utf-8")
    result = cli("augment", "preview", yo_cv / "clips" / SHORT_CLIPS[0], "--config", bad, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "augment.noise.p must be a probability in [0, 1], got 2.0" in result.output
    assert "Traceback" not in result.output
