import math

import pytest

from lrl.train.freezing import FreezeConfig, FreezeScheduleCallback, apply_freeze
from lrl.train.optim import LayerwiseLrConfig, TriStage, layerwise_param_groups, make_lr_lambda


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory):
    from lrl.models.checkpoints import init_tiny, load_for_ctc

    # 3 Transformer layers so "monotone in depth" has something to show
    ckpt = init_tiny(tmp_path_factory.mktemp("ckpt") / "tiny", "test", num_hidden_layers=3)
    return load_for_ctc(ckpt, vocab_size=12)


def test_layerwise_groups_decay_with_depth_and_put_the_head_on_top(ctc_model):
    cfg = LayerwiseLrConfig(lr=1e-3, layer_decay=0.5, head_lr_mult=10.0, weight_decay=0.01)
    groups = layerwise_param_groups(ctc_model, cfg)
    L = ctc_model.config.num_hidden_layers
    by_name = {}
    for g in groups:
        by_name.setdefault(g["name"], set()).add(g["lr"])
    assert all(len(v) == 1 for v in by_name.values())  # decay / no-decay groups of a layer share the LR
    lrs = {k: v.pop() for k, v in by_name.items()}
    depth_lrs = [lrs["bottom"]] + [lrs[f"layer.{i}"] for i in range(L)]
    assert all(a < b for a, b in zip(depth_lrs, depth_lrs[1:], strict=False))  # strictly growing toward the top
    for i in range(L):
        assert math.isclose(lrs[f"layer.{i}"], 1e-3 * 0.5 ** (L - 1 - i))
    assert math.isclose(lrs["bottom"], 1e-3 * 0.5**L)
    assert lrs["head"] == pytest.approx(1e-2) and lrs["head"] > max(depth_lrs)
    # every parameter exactly once; no weight decay on biases and norms
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(ctc_model.parameters()))
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in ctc_model.named_parameters():
        if name.endswith("bias") or "layer_norm" in name:
            assert wd[id(p)] == 0.0, name
        if name.endswith("lm_head.weight") or name.endswith("attention.k_proj.weight"):
            assert wd[id(p)] == 0.01, name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0), "lr"),
        (dict(layer_decay=1.5), "layer_decay"),
        (dict(head_lr_mult=0), "head_lr_mult"),
        (dict(weight_decay=-1), "weight_decay"),
    ],
)
def test_layerwise_lr_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerwiseLrConfig(**kwargs)


class _State:
    def __init__(self, step):
        self.global_step = step


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_requires_grad_flips_at_exactly_the_scheduled_steps(ctc_model):
    cfg = FreezeConfig(freeze_encoder_steps=3, unfreeze_layers=1, unfreeze_every=2, unfreeze_conv_at=9,
                       unfreeze_conv_every=1)
    cb = FreezeScheduleCallback(ctc_model, cfg)
    first_on: dict[str, int] = {}
    for step in range(15):
        cb.on_step_begin(None, _State(step), None)
        for n in _trainable_names(ctc_model):
            first_on.setdefault(n, step)
        # nothing ever re-freezes
        assert set(first_on) == _trainable_names(ctc_model)

    def step_of(prefix):
        steps = {s for n, s in first_on.items() if n.startswith(prefix)}
        assert len(steps) == 1, (prefix, steps)
        return steps.pop()

    assert step_of("lm_head.") == 0
    assert step_of("wav2vec2.encoder.layers.2.") == 3  # top layer first, after the frozen phase
    assert step_of("wav2vec2.encoder.layers.1.") == 5
    assert step_of("wav2vec2.encoder.layers.0.") == 7
    assert step_of("wav2vec2.feature_projection.") == 7  # the bottom comes with the last layer
    assert step_of("wav2vec2.feature_extractor.conv_layers.3.") == 9  # conv: top layer first
    assert step_of("wav2vec2.feature_extractor.conv_layers.2.") == 10
    assert step_of("wav2vec2.feature_extractor.conv_layers.0.") == 12
    assert [h[0] for h in cb.history] == [0, 3, 5, 7, 9, 10, 11, 12]
    assert cb.history[-1][1] == cb.history[-1][2]  # everything trains at the end
    assert ctc_model.wav2vec2.feature_extractor._requires_grad


def test_frozen_parameters_lose_their_gradient_before_the_optimizer_step(ctc_model):
    import torch

    cb = FreezeScheduleCallback(ctc_model, FreezeConfig(freeze_encoder_steps=100))
    cb.on_train_begin(None, _State(0), None)
    for p in ctc_model.parameters():
        p.grad = torch.ones_like(p)
    cb.on_pre_optimizer_step(None, None, None)
    for n, p in ctc_model.named_parameters():
        assert (p.grad is not None) == n.startswith("lm_head."), n


def test_adapter_mode_trains_only_adapters_and_head(tmp_path):
    from lrl.models.checkpoints import init_tiny, load_for_ctc

    model = load_for_ctc(init_tiny(tmp_path / "t", "test"), 9, adapter_attn_dim=8)
    trainable, total = apply_freeze(model, FreezeConfig(adapters=True).trainable_units(0, 2, 4))
    names = _trainable_names(model)
    assert names and all(n.startswith("lm_head.") or ".adapter_layer." in n for n in names)
    assert any(".adapter_layer." in n for n in names)
    assert 0 < trainable < total


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(freeze_encoder_steps=-1), "freeze_encoder_steps"),
        (dict(unfreeze_layers=2, unfreeze_every=0), "unfreeze_every"),
        (dict(unfreeze_conv_at=-2), "unfreeze_conv_at"),
    ],
)
def test_freeze_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FreezeConfig(**kwargs)


def test_warmup_cosine_rises_peaks_and_decays():
    f = make_lr_lambda("cosine", total_steps=100, warmup_steps=10)
    vals = [f(s) for s in range(101)]
    assert all(a < b for a, b in zip(vals[:10], vals[1:11], strict=True))
    assert vals[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:], strict=False))
    assert vals[100] == pytest.approx(0.0, abs=1e-9)


def test_tri_stage_matches_fairseq_phases():
    f = TriStage(total=100, phase_ratio=(0.1, 0.4, 0.5), init_scale=0.01, final_scale=0.05)
    assert f(0) == pytest.approx(0.01)
    assert f(10) == pytest.approx(1.0) and f(49) == pytest.approx(1.0)
    assert f(75) == pytest.approx(math.exp(math.log(0.05) * 25 / 50))
    assert f(100) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="phase_ratio"):
        TriStage(total=10, phase_ratio=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="lr_schedule"):
        make_lr_lambda("step", 10, 1)


# The factors lrl's schedules had when they were written out here (before transformers' public schedules
# replaced them): warmup (step + 1) / (warmup + 1), then cosine or linear to 0 at `total`, or constant.
def _old_factor(kind, warmup, total, step):
    total = max(total, 1)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * t))
    if kind == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return 1.0


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 1, 10, 99, 150])
def test_public_schedules_keep_lrl_shapes_over_a_100_step_run(kind, warmup):
    import torch

    total, peak = 100, 3e-4
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda(kind, total, warmup))
    lrs = []
    for _ in range(total + 20):  # 20 updates past the horizon: the factor stays at its end
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [peak * _old_factor(kind, warmup, total, s) for s in range(total + 20)]
    assert lrs == pytest.approx(want, abs=1e-6 * peak, rel=0)
    assert lrs[0] > 0  # unlike transformers' own warmup, the first update already learns


def test_time_budget_refit_moves_the_horizon_and_survives_a_checkpoint(tmp_path):
    import torch

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda("cosine", 1000, 5))
    fn = sched.lr_lambdas[0]
    fn.total = 50  # what lrl.train.callbacks.TimeBudgetCallback does
    assert fn(50) == pytest.approx(0.0, abs=1e-12) and fn(27) == pytest.approx(_old_factor("cosine", 5, 50, 27))
    torch.save(sched.state_dict(), tmp_path / "scheduler.pt")  # as the Trainer saves and reloads it
    state = torch.load(tmp_path / "scheduler.pt", weights_only=True)
    fresh = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda("cosine", 1000, 5))
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].total == 50
