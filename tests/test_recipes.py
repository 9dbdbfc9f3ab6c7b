"""Recipes fill the "auto" config keys from the start's size and the hours of data; explicit keys win;
`lrl train config` prints a TOML that loads back equal to the defaults."""

import dataclasses

import pytest
import tomllib

from lrl.train.config import TrainConfig, _field_comments, default_config_toml, load_config, parse_overrides
from lrl.train.recipes import AUTO, LARGE_PARAMS, RECIPES, choose_recipe, count_parameters, resolve_recipe


def _xlsr_300m_config():
    """XLS-R 300M's published shape (facebook/wav2vec2-xls-r-300m config.json): no weights needed."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def test_parameter_count_from_the_config_matches_a_built_model():
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from lrl.models.checkpoints import tiny_config

    for cfg in (tiny_config("small"), Wav2Vec2Config(hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
                                                      intermediate_size=192, conv_dim=(32,) * 7)):
        with torch.device("meta"):
            built = sum(p.numel() for p in Wav2Vec2Model(cfg).parameters())
        # biases, norms, positional conv and the projection are left out of the estimate: they are a
        # small share of a real model, so the estimate is within a factor that cannot move a start across
        # the 50M line (checked on XLS-R's shape below)
        assert 0.5 * built <= count_parameters(cfg) <= built, (count_parameters(cfg), built)
    n = count_parameters(_xlsr_300m_config())
    assert 280e6 <= n <= 320e6 and n >= LARGE_PARAMS


@pytest.mark.parametrize(("shape", "adapter", "want"), [("tiny", False, "small-start"), ("xlsr", False, "large"),
                                                        ("xlsr", True, "adapter"), ("tiny", True, "adapter")])
def test_auto_picks_the_recipe_from_the_start_and_mode(shape, adapter, want):
    from lrl.models.checkpoints import tiny_config

    cfg = tiny_config("small") if shape == "tiny" else _xlsr_300m_config()
    name, why = choose_recipe(cfg, 0.7, adapter)
    assert name == want and "0.70 h" in why


def test_explicit_keys_win_and_auto_keys_are_filled(tmp_path):
    from lrl.models.checkpoints import tiny_config

    cfg = TrainConfig().with_overrides({"optim.lr": 2e-4})
    out, note = resolve_recipe(cfg, tiny_config("small"), 0.7, planned_updates=2000)
    r = RECIPES["small-start"]
    assert out.optim.lr == 2e-4 and "optim.lr" in note["explicit"]  # explicit wins
    assert out.optim.warmup_steps == r.warmup_steps and out.freeze.freeze_feature_encoder is r.freeze_feature_encoder
    assert out.recipe == "small-start" and AUTO not in (out.optim.warmup_steps, out.model.spec_augment)
    # a short run: the warm-up is capped at a tenth of the planned updates
    short, _ = resolve_recipe(TrainConfig().with_overrides({"recipe": "large"}), tiny_config("small"), 0.7, 100)
    assert short.optim.warmup_steps == 10 < RECIPES["large"].warmup_steps and short.optim.lr == RECIPES["large"].lr
    # by-hours SpecAugment differs with the amount of data
    few, _ = resolve_recipe(TrainConfig().with_overrides({"recipe": "large"}), tiny_config("small"), 0.1, 1000)
    many, _ = resolve_recipe(TrainConfig().with_overrides({"recipe": "large"}), tiny_config("small"), 50.0, 1000)
    assert few.model.spec_augment != many.model.spec_augment
    # scratch trains the conv front end unless told otherwise
    sc, _ = resolve_recipe(TrainConfig().with_overrides({"recipe": "scratch"}), tiny_config("small"), 0.7, 1000)
    assert sc.freeze.freeze_feature_encoder is False
    kept, _ = resolve_recipe(TrainConfig().with_overrides({"recipe": "scratch", "freeze.freeze_feature_encoder": True}),
                             tiny_config("small"), 0.7, 1000)
    assert kept.freeze.freeze_feature_encoder is True


def test_auto_keys_parse_from_strings_and_reject_bad_values():
    c = TrainConfig().with_overrides(parse_overrides(["optim.lr=5e-4", "optim.warmup_steps=40", "recipe=scratch"]))
    assert c.optim.lr == 5e-4 and c.optim.warmup_steps == 40 and c.recipe == "scratch"
    assert TrainConfig().with_overrides({"optim.lr": "auto"}).optim.lr == AUTO
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig().with_overrides({"recipe": "xlsr"})
    with pytest.raises(ValueError, match="optim.lr: expected a number"):
        TrainConfig().with_overrides({"optim.lr": "fast"})
    with pytest.raises(ValueError, match='freeze_feature_encoder: expected true or false.*"auto"'):
        TrainConfig().with_overrides({"freeze.freeze_feature_encoder": "sometimes"})


def test_train_config_prints_every_key_with_its_comment_and_loads_back_as_the_defaults(tmp_path, cli):
    r = cli("train", "config")
    assert r.exit_code == 0, r.output
    assert r.output == default_config_toml()
    path = tmp_path / "run.toml"
    path.write_text(r.output, encoding="utf-8")
    assert load_config(path) == TrainConfig()
    parsed = tomllib.loads(r.output)
    defaults = TrainConfig()
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            assert set(parsed[f.name]) == {g.name for g in dataclasses.fields(value)}
            comments = _field_comments(type(value))
            assert all(comments[g.name] for g in dataclasses.fields(value)), f.name  # every key is explained
        else:
            assert f.name in parsed
    # layer-wise decay and unfreezing are discoverable from the CLI
    assert "layer_decay = 1.0  #" in r.output and "unfreeze_layers = 0  #" in r.output
    assert "lrl train config" in cli("train", "run", "--help").output
