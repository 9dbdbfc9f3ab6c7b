"""Wav2Vec2 checkpoints: tiny randomly initialised ones with the XLS-R structure (for tests, demos and
CPU experiments), written exactly as a hub checkpoint is; loading any Wav2Vec2 checkpoint (pretraining,
bare or CTC; hub id or directory; safetensors only unless allowed) as a Wav2Vec2ForCTC with a new head,
and cross-lingual head transfer from a fine-tuned model's vocabulary."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from lrl.core.io import LrlError

logger = logging.getLogger(__name__)

# The checkpoints lrl ships and how a `--checkpoint` name resolves (was in the start builder).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets"  # checkpoints that ship inside the package
SHIPPED = {"xl-tiny": SHIPPED_DIR / "xl-tiny"}  # name -> directory (a name never shadows a local dir)


def resolve_checkpoint(name: str | Path) -> str:
    """A local directory as given; a shipped start's name (`xl-tiny`) as its directory; anything else
    (a hub id) unchanged."""
    text = str(name)
    if Path(text).expanduser().exists() or text not in SHIPPED:
        return text
    path = SHIPPED[text]
    if not (path / "model.safetensors").is_file():
        raise LrlError(f"the shipped start {text!r} is missing from {path}: rebuild it with `make xl-start`")
    return str(path)


TinySize = Literal["test", "small"]

# "small": the 2.5M-parameter shape that trained best from scratch on 2 AVX2 cores (../shared/ENV-NOTES.md): a
# 4-layer conv front end with total stride 320 (20 ms frames at 16 kHz, like XLS-R's 7 layers), pre-LayerNorm
# ("stable") Transformer as in XLS-R/MMS. "test": the same structure, as small as it gets, for unit tests.
_TINY = {
    "test": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        codevector_dim=32, proj_codevector_dim=32, num_codevectors_per_group=32, num_codevector_groups=2,
    ),
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        conv_dim=(64, 128, 128, 128), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=16,
        codevector_dim=128, proj_codevector_dim=128, num_codevectors_per_group=160, num_codevector_groups=2,
    ),
}


def tiny_config(size: TinySize = "test", **overrides):
    """A `Wav2Vec2Config` with the XLS-R layout (stable layer norm, layer-normed conv front end)."""
    from transformers import Wav2Vec2Config

    if size not in _TINY:
        raise ValueError(f"size must be one of {sorted(_TINY)}, got {size!r}")
    kw = dict(
        feat_extract_norm="layer", do_stable_layer_norm=True, feat_extract_activation="gelu", conv_bias=True,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0,
        num_negatives=100, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1,
    )
    kw.update(_TINY[size])
    kw.update(overrides)
    return Wav2Vec2Config(**kw)


def init_tiny(out: str | Path, size: TinySize = "test", seed: int = 0, **overrides) -> Path:
    """Write a randomly initialised `Wav2Vec2ForPreTraining` checkpoint (safetensors + config +
    feature-extractor config) to `out`, the way XLS-R and MMS pretraining checkpoints ship."""
    import torch
    from transformers import Wav2Vec2ForPreTraining

    from lrl.core.audio import default_feature_extractor

    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(tiny_config(size, **overrides))
    out = Path(out)
    model.save_pretrained(out)
    default_feature_extractor().save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    logger.info("wrote a %s Wav2Vec2ForPreTraining (%.2fM parameters) to %s", size, n / 1e6, out)
    return out


# -- loading a checkpoint for CTC fine-tuning ------------------------------------------------------------
# Keys a pretraining checkpoint holds that a CTC model drops, and the head it lacks: expected, not warned.
_EXPECTED_UNEXPECTED = ("quantizer.", "project_q.", "project_hid.", "wav2vec2.quantizer.", "lm_head.")
_EXPECTED_MISSING = ("lm_head.",)
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # weight files (one, or a shard index)
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # pickle: loading can run code


def check_local_weights(path: Path, allow_pickle: bool) -> None:
    """Refuse a local checkpoint directory without config.json or weights, or with only pickle weights
    unless `allow_pickle` (a pickle can run code when loaded). Raises LrlError saying what to do."""
    if not (path / "config.json").is_file():
        raise LrlError(f"{path} has no config.json: expected a Hugging Face Wav2Vec2 checkpoint directory")
    if any((path / f).is_file() for f in SAFE_WEIGHTS):
        return
    pickled = [f for f in PICKLE_WEIGHTS if (path / f).is_file()]
    if not pickled:
        raise LrlError(f"{path} holds no weights (expected {SAFE_WEIGHTS[0]})")
    if not allow_pickle:
        raise LrlError(
            f"{path} holds only pickle weights ({pickled[0]}), which can run code when loaded. Convert them to "
            "safetensors, or pass --allow-pickle if you trust where the checkpoint came from."
        )


def _quiet_transformers():
    """A context that silences transformers' load report and progress bars (lrl reports what matters)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        level = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()

    return ctx()


def read_checkpoint_config(checkpoint: str | Path):
    """The Wav2Vec2Config of a hub id or local directory; LrlError when it is missing or not wav2vec2."""
    from transformers import Wav2Vec2Config

    text = resolve_checkpoint(checkpoint)
    local = Path(text).expanduser()
    if not local.exists() and (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text):
        raise LrlError(f"{checkpoint}: no such checkpoint directory (expected a local directory or a hub id like org/name)")
    try:
        cfg = Wav2Vec2Config.from_pretrained(text, trust_remote_code=False)
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise LrlError(f"cannot read a Wav2Vec2 config from {checkpoint!s}: {msg}") from e
    if getattr(cfg, "model_type", None) != "wav2vec2":
        raise LrlError(f"{checkpoint}: expected a wav2vec2 checkpoint, found model_type={cfg.model_type!r}")
    return cfg


def load_for_ctc(
    checkpoint: str | Path,
    vocab_size: int,
    pad_token_id: int = 0,
    allow_pickle: bool = False,
    adapter_attn_dim: int | None = None,
    attn_implementation: str | None = None,
    **config_overrides,
):
    """A `Wav2Vec2ForCTC` from a hub id or local directory holding a `Wav2Vec2ForPreTraining` (XLS-R,
    MMS), a bare `Wav2Vec2Model` or a fine-tuned `Wav2Vec2ForCTC`, with a new CTC head of `vocab_size`
    outputs (pad = blank), mean CTC loss and zero_infinity. Safetensors only unless `allow_pickle`;
    remote code is never trusted. `config_overrides` set config fields (dropouts, SpecAugment...).
    With `adapter_attn_dim`, MMS attention adapters are added and (with the head) freshly initialised.
    `attn_implementation` ("sdpa", "eager") picks the attention kernel (None = transformers' default, sdpa)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    checkpoint = resolve_checkpoint(checkpoint)
    local = Path(checkpoint)
    if local.exists():
        check_local_weights(local, allow_pickle)
    read_checkpoint_config(checkpoint)
    kw = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, ctc_loss_reduction="mean", ctc_zero_infinity=True)
    if adapter_attn_dim:
        kw["adapter_attn_dim"] = adapter_attn_dim
    kw.update(config_overrides)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        with _quiet_transformers():
            model, info = Wav2Vec2ForCTC.from_pretrained(
                str(checkpoint), use_safetensors=None if allow_pickle else True, trust_remote_code=False,
                ignore_mismatched_sizes=True, output_loading_info=True, dtype=torch.float32, **kw,
            )
    except OSError as e:
        hint = "" if allow_pickle else " (only safetensors weights are loaded unless --allow-pickle)"
        raise LrlError(f"cannot load {checkpoint!s}{hint}: {' '.join(str(e).split())}") from e
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(_EXPECTED_UNEXPECTED)]
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(_EXPECTED_MISSING)]
    if adapter_attn_dim:
        missing = [k for k in missing if ".adapter_layer." not in k]
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    mismatched = [k for k in mismatched if not str(k).startswith("lm_head.")]
    if unexpected:
        logger.warning("%d checkpoint weights were not used: %s", len(unexpected), ", ".join(unexpected[:8]))
    if missing:
        logger.warning("%d weights are not in the checkpoint and start random: %s", len(missing), ", ".join(missing[:8]))
    if mismatched:
        logger.warning("%d weights had a different shape and start random: %s", len(mismatched), ", ".join(map(str, mismatched[:8])))
    if adapter_attn_dim:
        model.init_adapter_layers()
    n = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s as Wav2Vec2ForCTC (%.2fM parameters, %d outputs)", checkpoint, n / 1e6, vocab_size)
    return model


# -- loading a fine-tuned CTC model for inference (evaluate, transcribe, lm tune) ---------------------------
def _read_json(path: Path, what: str):
    """A JSON file of a model directory; LrlError naming the file when it is not UTF-8 JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LrlError(f"{path} is not valid UTF-8 JSON ({e}): expected the {what} saved with the model; "
                       "copy the model directory again or save it with `lrl train run`") from e


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a safetensors file, read from its header (safetensors checks that the header
    is whole and the file covers every tensor). LrlError naming the file when it is truncated or corrupt."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as st:
            return {k: list(st.get_slice(k).get_shape()) for k in st.keys()}
    except (SafetensorError, OSError) as e:
        raise LrlError(f"{path} is truncated or corrupt ({' '.join(str(e).split())}; {path.stat().st_size} bytes): "
                       "expected a whole safetensors file; copy or save the model again") from e


def check_ctc_model(model_dir: str | Path, allow_pickle: bool = False) -> int:
    """Check a saved fine-tuned `Wav2Vec2ForCTC` directory before loading it: a directory with a wav2vec2
    config.json and weights (safetensors, or pickle only with `allow_pickle`), whole safetensors files and a
    CTC head whose size the config agrees with. Returns the head's number of outputs; raises LrlError naming
    the file at fault."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LrlError(f"{model_dir}: not a model directory (expected the output directory of `lrl train run`)")
    check_local_weights(model_dir, allow_pickle)
    cfg = _read_json(model_dir / "config.json", "Wav2Vec2 config")
    if not isinstance(cfg, dict) or cfg.get("model_type") != "wav2vec2":
        found = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise LrlError(f"{model_dir / 'config.json'}: expected a wav2vec2 model config, found model_type={found!r}")
    outputs = cfg.get("vocab_size")
    index = model_dir / SAFE_WEIGHTS[1]
    if (model_dir / SAFE_WEIGHTS[0]).is_file():
        weights = model_dir / SAFE_WEIGHTS[0]
        head = safetensors_shapes(weights).get("lm_head.weight")
    elif index.is_file():
        wmap = _read_json(index, "shard index").get("weight_map", {})
        shapes = {}
        for shard in sorted(set(wmap.values())):
            if not (model_dir / shard).is_file():
                raise LrlError(f"{index} names the shard {shard}, which is missing: copy the model directory again")
            shapes.update(safetensors_shapes(model_dir / shard))
        weights, head = index, shapes.get("lm_head.weight")
    else:  # pickle weights, allowed: the head is only known once loaded
        return int(outputs) if isinstance(outputs, int) else -1
    if head is None:
        raise LrlError(f"{weights} has no CTC head (lm_head.weight): expected a fine-tuned Wav2Vec2ForCTC, found a "
                       "pretraining or bare checkpoint; fine-tune it first with `lrl train run`")
    if outputs != head[0]:
        raise LrlError(f"{model_dir / 'config.json'} says vocab_size={outputs} but the CTC head in {weights.name} has "
                       f"{head[0]} outputs: the config does not belong to these weights")
    return int(head[0])


def load_ctc_model(model_dir: str | Path, allow_pickle: bool = False):
    """A saved fine-tuned `Wav2Vec2ForCTC` (eval mode, float32) and its feature extractor, after
    `check_ctc_model`. Safetensors only unless `allow_pickle` (pickles load weights-only); remote code is
    never run. Load failures become LrlError naming the model directory."""
    import pickle

    import torch
    from safetensors import SafetensorError
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    model_dir = Path(model_dir)
    check_ctc_model(model_dir, allow_pickle)
    try:
        with _quiet_transformers():
            model = Wav2Vec2ForCTC.from_pretrained(
                str(model_dir), use_safetensors=None if allow_pickle else True, trust_remote_code=False,
                dtype=torch.float32,
            )
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError, SafetensorError) as e:
        weights = next((model_dir / f for f in SAFE_WEIGHTS + PICKLE_WEIGHTS if (model_dir / f).is_file()), model_dir)
        hint = " (a pickle loads weights-only: tensors, no code)" if weights.name in PICKLE_WEIGHTS else ""
        raise LrlError(f"cannot load {weights}{hint}: {' '.join(str(e).split())[:300]}") from e
    configs = [model_dir / f for f in ("preprocessor_config.json", "processor_config.json") if (model_dir / f).is_file()]
    for path in configs:
        _read_json(path, "feature extractor config")
    try:
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError, KeyError) as e:
        where = configs[0] if configs else model_dir / "preprocessor_config.json"
        raise LrlError(f"{where}: cannot read the feature extractor ({' '.join(str(e).split())[:300]}); expected "
                       "the processor files `lrl train run` saves beside the model") from e
    return model.eval(), extractor


def _read_head(source: Path, allow_pickle: bool):
    """lm_head weight and bias of a CTC checkpoint directory, read without building the model."""
    import torch

    check_local_weights(source, allow_pickle)
    index = source / "model.safetensors.index.json"
    if (source / "model.safetensors").is_file() or index.is_file():
        from safetensors import safe_open

        if index.is_file():
            wmap = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = {wmap.get("lm_head.weight"), wmap.get("lm_head.bias")} - {None}
        else:
            files = {"model.safetensors"}
        tensors = {}
        for f in files:
            with safe_open(str(source / f), framework="pt") as st:
                for k in ("lm_head.weight", "lm_head.bias"):
                    if k in st.keys():
                        tensors[k] = st.get_tensor(k)
    else:
        tensors = torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if "lm_head.weight" not in tensors:
        raise LrlError(f"{source} has no CTC head (lm_head.weight): --init-head-from needs a fine-tuned Wav2Vec2ForCTC")
    return tensors["lm_head.weight"], tensors.get("lm_head.bias")


def _read_vocab(source: Path) -> dict[str, int]:
    path = source / "vocab.json"
    if not path.is_file():
        raise LrlError(f"{source} has no vocab.json: --init-head-from needs the model's tokenizer files beside it")
    v = json.loads(path.read_text(encoding="utf-8"))
    if v and all(isinstance(x, dict) for x in v.values()):
        raise LrlError(f"{path} holds one vocabulary per language (MMS); head transfer needs a single-language model")
    return {str(k): int(i) for k, i in v.items()}


def transfer_head(model, target_tokens: list[str] | tuple[str, ...], source: str | Path, allow_pickle: bool = False) -> list[str]:
    """Copy the output rows of tokens shared with the CTC model at `source` (its lm_head and vocab.json)
    into `model.lm_head`; the blank ([PAD] / <pad>), unknown and word delimiter map to their
    counterparts; a character missing in the source is looked up in the other case. Returns the tokens
    copied."""
    import torch

    source = Path(resolve_checkpoint(source))
    weight, bias = _read_head(source, allow_pickle)
    src_vocab = _read_vocab(source)
    if weight.shape[1] != model.lm_head.in_features:
        raise LrlError(
            f"{source}'s head reads {weight.shape[1]} features but this model's hidden size is "
            f"{model.lm_head.in_features}: head transfer needs models of the same size"
        )
    aliases = {"[PAD]": ("[PAD]", "<pad>"), "[UNK]": ("[UNK]", "<unk>"), "|": ("|", " ")}
    copied = []
    with torch.no_grad():
        for i, tok in enumerate(target_tokens):
            # exact match first, then the other case (English CTC models often use upper-case vocabularies)
            for cand in aliases.get(tok, (tok, tok.upper(), tok.lower())):
                j = src_vocab.get(cand)
                if j is not None and j < weight.shape[0]:
                    model.lm_head.weight[i].copy_(weight[j])
                    if bias is not None:
                        model.lm_head.bias[i].copy_(bias[j])
                    copied.append(tok)
                    break
    logger.info("head transfer from %s: %d of %d output rows copied", source, len(copied), len(target_tokens))
    if len(copied) <= 3:
        logger.warning("head transfer: %s shares no characters with this vocabulary beyond the special tokens", source)
    return copied
