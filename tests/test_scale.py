"""The GPU path checked on CPU (the CTC loss stays fp32 under autocast; precision, attention kernel, compile and
dataloader options reach the model and the Trainer) and real model scale (slow: the XLS-R 300M shape trains with
gradient checkpointing and layer-wise decay; bench/gpu.py --tiny runs end to end)."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from corpus_fixtures import shared_fsdd_dataset

from lrl.train.accel import AccelPlan, plan_accel, resolve_precision
from lrl.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# XLS-R 300M's published architecture (facebook/wav2vec2-xls-r-300m config.json)
XLSR_300M = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16, codevector_dim=768, proj_codevector_dim=768, num_codevectors_per_group=320,
    num_codevector_groups=2,
)


@pytest.fixture(scope="module")
def fsdd_data(tmp_path_factory):
    return shared_fsdd_dataset(tmp_path_factory, n_train=8, n_dev=2)


def _ctc_batch(vocab_size: int = 12):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16000, generator=g)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 12000:] = 0
    x[1, 12000:] = 0
    labels = torch.tensor([[1, 2, 3, 4], [5, 6, 7, -100]])
    return x, mask, labels


# -- the loss under mixed precision -----------------------------------------------------------------------
def test_ctc_loss_is_float32_under_bf16_autocast(tiny_ckpt):
    """transformers' ForCTCLoss takes log_softmax in float32 before ctc_loss: under autocast the logits are bf16
    and the loss is fp32, equal to the fp32 CTC of those same (upcast) logits. If a transformers upgrade drops
    the upcast, this fails and lrl must compute the loss itself."""
    import torch

    from lrl.models.checkpoints import load_for_ctc

    model = load_for_ctc(tiny_ckpt, 12, 0).eval()
    x, mask, labels = _ctc_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, attention_mask=mask, labels=labels)
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    lengths = model._get_feat_extract_output_lengths(mask.sum(-1))
    keep = labels >= 1
    ref = torch.nn.functional.ctc_loss(
        torch.log_softmax(out.logits.float(), -1).transpose(0, 1), labels[keep], lengths, keep.sum(-1),
        blank=0, reduction="mean", zero_infinity=True)
    assert torch.allclose(out.loss, ref, rtol=1e-5)


def test_ctc_loss_of_large_fp16_range_logits_stays_finite():
    """Logits near fp16's edge: a softmax in fp16 overflows, the fp32 upcast does not."""
    import torch
    from transformers.loss.loss_ctc import ForCTCLoss

    logits = (torch.randn(2, 50, 12) * 6e4).clamp(-65000, 65000).half()
    loss = ForCTCLoss(logits, torch.tensor([[1, 2, 3], [4, 5, -100]]), torch.tensor([50, 40]), blank_token_id=0,
                      zero_infinity=True)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# -- the plan: precision, workers, pinning -----------------------------------------------------------------
@pytest.mark.parametrize("precision, cuda, bf16, expected", [
    ("auto", False, False, "fp32"),   # CPU: fp32 (bf16 autocast is slower without bf16 hardware)
    ("auto", True, True, "bf16"),     # Ampere+: bf16, no loss scaling
    ("auto", True, False, "fp32"),    # V100/T4: fp32 unless fp16 is asked for
    ("fp16", True, False, "fp16"),    # an explicit choice is kept
    ("bf16", False, False, "bf16"),
])
def test_precision_auto_resolves_per_machine(precision, cuda, bf16, expected):
    assert resolve_precision(precision, cuda, bf16) == expected


def test_plan_on_cpu_and_on_a_gpu():
    cfg = TrainConfig()
    assert cfg.precision == "auto" and cfg.data.num_workers == "auto" and cfg.model.attn_implementation == "sdpa"
    cpu = plan_accel(cfg, cuda=False, bf16_supported=False, cpus=2)
    assert cpu == AccelPlan("cpu", "fp32", 0, False, "sdpa", False)
    gpu = plan_accel(cfg, cuda=True, bf16_supported=True, cpus=16)
    assert (gpu.precision, gpu.num_workers, gpu.pin_memory) == ("bf16", 4, True)
    args = gpu.training_args()
    assert args["bf16"] and not args["fp16"] and args["dataloader_pin_memory"] and args["dataloader_persistent_workers"]
    assert args["dataloader_num_workers"] == 4 and args["dataloader_prefetch_factor"] == 2
    explicit = TrainConfig().with_overrides({"data.num_workers": "2", "precision": "fp16", "model.compile": "true",
                                             "model.attn_implementation": "eager"})
    p = plan_accel(explicit, cuda=True, bf16_supported=True, cpus=16)
    assert (p.num_workers, p.precision, p.compile, p.attn_implementation) == (2, "fp16", True, "eager")
    assert p.training_args()["fp16"]


@pytest.mark.parametrize("overrides, match", [
    ({"model.attn_implementation": "flash"}, "model.attn_implementation"),
    ({"data.num_workers": -1}, "data.num_workers"),
    ({"precision": "fp8"}, "precision"),
])
def test_accelerator_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig().with_overrides(overrides)


# -- the options reach the model ------------------------------------------------------------------------
def test_attention_kernel_reaches_the_model_and_sdpa_equals_eager(tiny_ckpt):
    import torch

    from lrl.models.checkpoints import load_for_ctc

    x, mask, _ = _ctc_batch()
    logits = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)  # the new head starts the same in both
        model = load_for_ctc(tiny_ckpt, 12, 0, attn_implementation=impl).eval()
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = model(x, attention_mask=mask).logits
    assert torch.allclose(logits["eager"][1, :37], logits["sdpa"][1, :37], atol=1e-5)  # padded rows: same frames
    assert torch.allclose(logits["eager"][0], logits["sdpa"][0], atol=1e-5)


def test_compile_flag_compiles_the_forward_in_place(tiny_ckpt):
    from lrl.models.checkpoints import load_for_ctc
    from lrl.train.accel import apply_to_model

    model = load_for_ctc(tiny_ckpt, 12, 0)
    keys = set(model.state_dict())
    apply_to_model(model, AccelPlan("cuda", "bf16", 4, True, "sdpa", compile=False))
    assert model._compiled_call_impl is None
    apply_to_model(model, AccelPlan("cuda", "bf16", 4, True, "sdpa", compile=True))
    assert model._compiled_call_impl is not None  # nn.Module.compile: compiled on the first call
    assert set(model.state_dict()) == keys  # no _orig_mod. prefix: checkpoints are unchanged


def test_training_run_records_and_applies_the_plan(fsdd_data, tiny_ckpt, tmp_path, monkeypatch):
    from lrl.train import trainer as trainer_mod

    seen = {}
    real_init = trainer_mod.CTCTrainer.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen["args"], seen["model"] = self.args, self.model

    monkeypatch.setattr(trainer_mod.CTCTrainer, "__init__", spy)
    out = tmp_path / "run"
    cfg = TrainConfig().with_overrides({
        "output_dir": str(out), "data.path": str(fsdd_data), "model.checkpoint": str(tiny_ckpt),
        "optim.max_steps": 1, "eval.eval_steps": 1, "batching.max_seconds": 5.0, "data.test_split": "",
        "data.eval_split": "", "model.attn_implementation": "eager",
    })
    trainer_mod.train(cfg)
    acc = yaml.safe_load((out / "train_config.yaml").read_text())["resolved"]["accelerator"]
    assert acc == {"device": "cpu", "precision": "fp32", "num_workers": 0, "pin_memory": False,
                   "attn_implementation": "eager", "compile": False}
    assert seen["model"].config._attn_implementation == "eager"
    assert not seen["args"].dataloader_pin_memory and not seen["args"].bf16 and not seen["args"].fp16


# -- real scale (slow) ------------------------------------------------------------------------------------
def _save_300m(path: Path) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    from lrl.core.audio import default_feature_extractor

    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**XLSR_300M))
    model.save_pretrained(path)  # safetensors
    default_feature_extractor().save_pretrained(path)
    del model
    return path


@pytest.mark.slow
def test_xlsr_300m_shape_trains_with_checkpointing_and_layerwise_decay(fsdd_data, tmp_path, monkeypatch):
    from lrl.train import trainer as trainer_mod

    ckpt = _save_300m(tmp_path / "xlsr300m")
    assert (ckpt / "model.safetensors").is_file()
    groups: list[dict] = []
    real = trainer_mod.layerwise_param_groups

    def capture(model, config):
        groups.extend(real(model, config))
        return groups

    monkeypatch.setattr(trainer_mod, "layerwise_param_groups", capture)
    lr, decay = 1e-4, 0.9
    cfg = TrainConfig().with_overrides({
        "output_dir": str(tmp_path / "run"), "data.path": str(fsdd_data), "model.checkpoint": str(ckpt),
        "optim.max_steps": 2, "optim.lr": lr, "optim.layer_decay": decay, "optim.warmup_steps": 0,
        "optim.schedule": "constant", "model.gradient_checkpointing": "true", "eval.eval_steps": 2,
        "eval.save_total_limit": 1, "batching.max_seconds": 2.0, "data.eval_split": "", "data.test_split": "",
        "freeze.freeze_feature_encoder": "true", "data.cache_features": "false",
    })
    result = trainer_mod.train(cfg)
    assert result.global_step == 2 and result.nonfinite_skipped == 0
    by_name = {g["name"]: g for g in groups}
    assert all(f"layer.{i}" in by_name for i in range(24))
    for i in range(24):  # optimizer groups hold the dicts: these are the LRs after 2 updates
        assert by_name[f"layer.{i}"]["lr"] == pytest.approx(lr * decay ** (23 - i), rel=1e-6), i
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # ~1.3 GB of fp32 weights, as much of gradients, 2.5 GB of Adam state, the checkpoint's copies
    assert peak_gb < 12, f"peak RSS {peak_gb:.1f} GB"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 24 and saved["hidden_size"] == 1024


@pytest.mark.slow
def test_gpu_bench_runs_tiny_on_cpu(tmp_path):
    """bench/gpu.sh --tiny: the GPU benchmark's every cell, on a tiny model on the CPU."""
    from conftest import SHARED_DATA

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", "--data-root", str(SHARED_DATA)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "gpu-results.md").read_text()
    assert "yo-cv clips" in table or not (SHARED_DATA / "yo-cv").is_dir()
    for cell in ("fp32", "bf16", "eager", "sdpa", "checkpointing", "dynamic", "group_by_length", "TFLOP/s"):
        assert cell in table, cell
