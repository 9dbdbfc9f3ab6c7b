"""A training run's configuration: one frozen dataclass per section ([data] [model] [optim] [batching]
[freeze] [eval] + top-level fields), read from TOML/YAML with `--set key=value` overrides, validated in
one place, and saved into the output directory with the resolved values (`train_config.yaml`)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from lrl.augment.specaugment import SPEC_PRESETS
from lrl.augment.wave import WavePreset
from lrl.core.io import LrlError, atomic_write_text
from lrl.train.batching import BatchingConfig, check_seed
from lrl.train.freezing import FreezeConfig
from lrl.train.optim import LayerwiseLrConfig
from lrl.train.recipes import AUTO, RECIPE_NAMES

CONFIG_FILE = "train_config.yaml"  # the resolved run config written into the output directory
_SPEC_CHOICES = ("auto", "checkpoint", *SPEC_PRESETS)  # model.spec_augment: the recipe's, the saved one, or a preset
Precision = Literal["auto", "fp32", "fp16", "bf16"]  # TrainConfig.precision
AttnImplementation = Literal["sdpa", "eager"]  # ModelConfig.attn_implementation


# -- sections -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is fed."""

    path: str = ""  # a prepared dataset directory (`lrl data prepare`), with DIR/vocab
    train_split: str = "train"  # split trained on
    eval_split: str = "dev"  # split evaluated every `eval_steps` ("" = no evaluation)
    test_split: str = "test"  # split evaluated once at the end if present ("" = none)
    max_eval_clips: int = 0  # evaluate on at most this many dev clips (0 = all)
    augment: WavePreset = "none"  # waveform augmentation preset of lrl.augment.wave: none, light, strong
    num_workers: int | str = AUTO  # dataloader worker processes (each gets its own augmentation stream; "auto" = 0
    # on a CPU, where the cores train, up to 4 on a GPU: lrl.train.accel)
    cache_features: bool = True  # compute the frozen conv front end's output once, reuse it every epoch (lrl.train.featcache)
    cache_max_gb: float = 4.0  # no cache when it would take more memory than this (GiB)
    extra_path: str = ""  # a second prepared dataset trained on beside data.path, e.g. `lrl pseudo-label` output ("" = none)
    extra_weight: float = 1.0  # use at most this x the labelled train hours of it (most confident rows first; lrl.train.mix)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.extra_weight) and self.extra_weight > 0):
            raise ValueError(f"data.extra_weight must be > 0 (x the labelled train hours), got {self.extra_weight}")
        if self.cache_max_gb < 0:
            raise ValueError(f"data.cache_max_gb must be >= 0 (GiB), got {self.cache_max_gb}")
        if not self.train_split:
            raise ValueError("data.train_split must name a split, got ''")
        if self.max_eval_clips < 0:
            raise ValueError(f"data.max_eval_clips must be >= 0 (0 = all), got {self.max_eval_clips}")
        if self.augment not in get_args(WavePreset):
            raise ValueError(f"data.augment must be one of {list(get_args(WavePreset))}, got {self.augment!r}")
        if self.num_workers != AUTO and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ValueError(f"data.num_workers must be >= 0 or \"auto\", got {self.num_workers}")


@dataclass(frozen=True)
class ModelConfig:
    """The starting checkpoint and what changes in it."""

    checkpoint: str = ""  # hub id or local directory (Wav2Vec2ForPreTraining / Wav2Vec2Model / Wav2Vec2ForCTC)
    allow_pickle: bool = False  # also load pytorch_model.bin (pickle can run code: trusted sources only)
    init_head_from: str = ""  # a fine-tuned CTC model dir whose head rows for shared characters are copied
    adapter_lang: str = ""  # MMS adapter mode: train only attention adapters + head, save adapter.<lang>.safetensors
    adapter_attn_dim: int = 16  # adapter bottleneck width in adapter mode
    spec_augment: str = AUTO  # SpecAugment preset of lrl.augment.specaugment (auto = the recipe's; "checkpoint" = as saved)
    layerdrop: float = 0.0  # probability of skipping a Transformer layer per step
    hidden_dropout: float = 0.0  # dropout in the Transformer
    final_dropout: float = 0.0  # dropout before the CTC head
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    attn_implementation: AttnImplementation = "sdpa"  # attention kernel: sdpa (torch's fused attention: less memory
    # on long clips, flash/memory-efficient kernels on GPUs) or eager (the reference; needed for attention maps)
    compile: bool = False  # torch.compile the model's forward (GPU; dynamic shapes; the first updates compile)

    def __post_init__(self) -> None:
        for f in ("layerdrop", "hidden_dropout", "final_dropout"):
            v = getattr(self, f)
            if not 0 <= v < 1:
                raise ValueError(f"model.{f} must be in [0, 1), got {v}")
        if self.adapter_attn_dim < 1:
            raise ValueError(f"model.adapter_attn_dim must be >= 1, got {self.adapter_attn_dim}")
        if self.adapter_lang and not re.fullmatch(r"[A-Za-z0-9_-]+", self.adapter_lang):  # it names a file
            raise ValueError(f"model.adapter_lang must be a language code of letters, digits, '-' or '_' (e.g. yor), "
                             f"got {self.adapter_lang!r}")
        if self.spec_augment not in _SPEC_CHOICES:
            raise ValueError(f"model.spec_augment must be one of {list(_SPEC_CHOICES)}, got {self.spec_augment!r}")
        if self.attn_implementation not in get_args(AttnImplementation):
            raise ValueError(f"model.attn_implementation must be one of {list(get_args(AttnImplementation))}, "
                             f"got {self.attn_implementation!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (layer-wise LRs: see lrl.train.optim.LayerwiseLrConfig)."""

    lr: float | str = AUTO  # peak LR of the top Transformer layer ("auto" = the recipe's)
    layer_decay: float = 1.0  # LR factor per layer going down
    head_lr_mult: float = 1.0  # head LR relative to `lr`
    weight_decay: float = 0.0  # AdamW weight decay (not on norms/biases)
    schedule: str = "cosine"  # cosine (warmup + cosine), tri_stage (fairseq), linear, constant
    warmup_steps: int | str = AUTO  # linear warmup updates (cosine/linear/constant; "auto" = the recipe's)
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)  # tri_stage warmup/hold/decay shares
    max_steps: int = 2000  # optimizer updates in all (> 0), or 0 to use `epochs`
    epochs: float = 0.0  # passes over the training split when max_steps = 0
    grad_accum: int = 1  # batches per update
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)

    def __post_init__(self) -> None:
        LayerwiseLrConfig(1.0 if self.lr == AUTO else self.lr, self.layer_decay, self.head_lr_mult,
                          self.weight_decay)  # validates those
        if self.schedule not in ("cosine", "tri_stage", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, tri_stage, linear or constant, got {self.schedule!r}")
        if self.warmup_steps != AUTO and self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_steps < 0 or (self.max_steps == 0 and not self.epochs > 0):
            raise ValueError(f"set optim.max_steps > 0 or optim.epochs > 0, got max_steps={self.max_steps}, epochs={self.epochs}")
        if self.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        if self.epochs < 0:
            raise ValueError(f"optim.epochs must be >= 0 (0 = use max_steps), got {self.epochs}")
        if len(self.phase_ratio) != 3 or abs(sum(self.phase_ratio) - 1) > 1e-6:
            raise ValueError(f"optim.phase_ratio must be 3 shares summing to 1, got {self.phase_ratio}")
        if self.max_grad_norm < 0:
            raise ValueError(f"optim.max_grad_norm must be >= 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation, checkpoints and logging."""

    eval_steps: int = 200  # evaluate on the dev split every this many updates
    save_steps: int = 0  # checkpoint every this many updates (0 = at each evaluation)
    save_total_limit: int = 2  # checkpoints kept, the best one always among them (0 = keep all)
    early_stopping_patience: int = 0  # stop after this many evaluations without a better WER (0 = off)
    logging_steps: int = 10  # log loss / LR every this many updates
    eval_batch_size: int = 8  # clips per evaluation batch (dev is sorted by length, so little padding)

    def __post_init__(self) -> None:
        for f in ("eval_steps", "logging_steps", "eval_batch_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"eval.{f} must be >= 1, got {getattr(self, f)}")
        for f in ("save_steps", "save_total_limit", "early_stopping_patience"):
            if getattr(self, f) < 0:
                raise ValueError(f"eval.{f} must be >= 0, got {getattr(self, f)}")
        if self.save_steps % self.eval_steps:
            raise ValueError(
                f"eval.save_steps ({self.save_steps}) must be 0 or a multiple of eval.eval_steps ({self.eval_steps}) "
                "so the best checkpoint by WER can be kept"
            )


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sections map to the config file's tables, e.g. `run.toml`:

        output_dir = "runs/yo-xlsr"
        [data]
        path = "runs/yo/data"
        [model]
        checkpoint = "facebook/wav2vec2-xls-r-300m"
        [optim]
        lr = 3e-4
        layer_decay = 0.9
        head_lr_mult = 10
        max_steps = 4000
        [freeze]
        freeze_encoder_steps = 500
        unfreeze_layers = 4
        unfreeze_every = 200

    then `lrl train run -c run.toml --set optim.lr=1e-4`; the resolved config lands in
    output_dir/train_config.yaml, which loads back with `-c`."""

    output_dir: str = ""  # where the model, checkpoints, logs and card go
    recipe: str = AUTO  # fills the "auto" keys (lr, warm-up, conv freezing, SpecAugment): auto (from the start's size and
    # the hours of data), small-start, scratch, large, adapter or hf-example; explicit keys always win (lrl.train.recipes)
    seed: int = 0  # model init, shuffling, augmentation
    precision: Precision = "auto"  # auto (bf16 on a GPU that has it, else fp32: lrl.train.accel), fp32, fp16 or bf16
    # (mixed precision, the CTC loss in fp32 either way; bf16 is slower on AVX2-only CPUs: ../shared/ENV-NOTES.md)
    resume: bool = False  # continue from the last checkpoint in output_dir
    threads: int = 0  # torch CPU threads per process (0 = automatic, lrl.core.cpu.choose_threads: the CPUs other
    # processes leave free, at most torch's default; an explicit count always wins)
    max_minutes: float = 0.0  # wall-clock training budget (0 = none): training stops when it is spent, and the
    # LR schedule's horizon is re-fitted to the updates that fit, so the LR still decays (cosine/linear)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = automatic), got {self.threads}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0 = no budget), got {self.max_minutes}")
        if self.recipe not in RECIPE_NAMES:
            raise ValueError(f"recipe must be one of {list(RECIPE_NAMES)}, got {self.recipe!r}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {list(get_args(Precision))}, got {self.precision!r}")
        if self.model.adapter_lang and not self.freeze.adapters:
            object.__setattr__(self, "freeze", dataclasses.replace(self.freeze, adapters=True))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return _build(cls, data, "")

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted keys set ("optim.lr": 1e-3, "output_dir": ...)."""
        d = self.to_dict()
        for key, value in overrides.items():
            parts = key.split(".")
            node = d
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ValueError(f"unknown config section {p!r} in {key!r}; sections: {_sections()}")
                node = node[p]
            if parts[-1] not in node:
                raise ValueError(f"unknown config key {key!r}; {'.'.join(parts[:-1]) or 'top level'} has {sorted(node)}")
            node[parts[-1]] = value
        return TrainConfig.from_dict(d)


def _sections() -> list[str]:
    return ["data", "model", "optim", "freeze", "batching", "eval"]


_AUTO_KINDS = {"float": 0.0, "int": 0, "bool": False}  # "auto"-or-value fields: the value's type (a Literal takes "auto" as is)


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or 'top level'} must be a table, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; {prefix or 'top level'} has {sorted(known)}")
    kw = {}
    for name, value in data.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else known[name].default
        if dataclasses.is_dataclass(default):
            kw[name] = _build(type(default), value, f"{prefix}{name}.")
        elif default == AUTO and str(known[name].type).split("|")[0].strip() in _AUTO_KINDS:  # "auto" or a number/bool
            kind = _AUTO_KINDS[str(known[name].type).split("|")[0].strip()]
            try:
                kw[name] = AUTO if value == AUTO else _coerce(value, kind, prefix + name)
            except ValueError as e:
                raise ValueError(f'{e} (or "auto": the recipe\'s value)') from e
        else:
            kw[name] = _coerce(value, default, prefix + name)
    return cls(**kw)


def _coerce(value, default, key: str):
    """Values from TOML/YAML/CLI strings into the type of the field's default."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value) if not (isinstance(default, bool) and value.lower() in ("true", "false")) else value.lower() == "true"
        except json.JSONDecodeError as e:
            kind = {bool: "true or false", int: "an integer", float: "a number", tuple: "a list"}.get(type(default), "a value")
            raise ValueError(f"{key}: expected {kind}, got {value!r}") from e
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # "nan"/"inf" parse as JSON and TOML numbers, and pass every "< 0" check
            raise ValueError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from a TOML (.toml) or YAML (.yaml/.yml) file, then `overrides` (dotted keys)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LrlError(f"{path}: no such config file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise LrlError(f"{path} is not UTF-8 (byte {e.start}: {e.object[e.start:e.start + 4]!r}); "
                           "save the config as UTF-8") from e
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                raise LrlError(f"{path}: expected a .toml, .yaml or .yml config file")
        except LrlError:
            raise
        except Exception as e:
            raise LrlError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from e
    if isinstance(data, dict):
        data.pop("resolved", None)  # what a run measured (train_config.yaml of an output dir): informational
    try:
        cfg = TrainConfig.from_dict(data)
    except ValueError as e:  # an unknown key or a bad value in the file: name the file
        raise LrlError(f"{path}: {e}") from e
    return cfg.with_overrides(overrides or {}) if overrides else cfg


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` strings (from `--set`) into a dict; values are coerced by the field's type later."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. optim.lr=3e-4), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def save_config(cfg: TrainConfig, directory: Path, extra: dict | None = None) -> Path:
    import yaml

    d = cfg.to_dict()
    if extra:
        d["resolved"] = extra
    path = directory / CONFIG_FILE
    atomic_write_text(path, yaml.safe_dump(_plain(d), sort_keys=False, allow_unicode=True))
    return path


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# -- the annotated default config (`lrl train config`) --------------------------------------------
def default_config_toml() -> str:
    """The complete default TrainConfig as TOML, every key with the comment it has in the source, ready
    to save, edit and pass back with `lrl train run -c FILE` (it loads back equal to the defaults)."""
    cfg = TrainConfig()
    lines = ["# lrl train run configuration: every key at its default, with what it means.",
             "# Save it, edit what you need (or delete the rest), then: lrl train run -c run.toml",
             "# Keys left at \"auto\" are filled by the recipe (see `recipe`); the run's train_config.yaml says how.", ""]
    tables = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        else:
            lines += _toml_key(type(cfg), f.name, value)
    for name, section in tables:
        lines += ["", f"[{name}]", f"# {(type(section).__doc__ or '').strip().splitlines()[0]}"]
        for f in dataclasses.fields(section):
            lines += _toml_key(type(section), f.name, getattr(section, f.name))
    return "\n".join(lines) + "\n"


def _toml_key(cls, name: str, value) -> list[str]:
    comment = _field_comments(cls).get(name, [])
    first = f"{name} = {_toml_value(value)}"
    return [f"{first}  # {comment[0]}" if comment else first, *(f"#   {c}" for c in comment[1:])]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _field_comments(cls) -> dict[str, list[str]]:
    """Field name -> its source comment lines (the trailing one, then any comment-only lines below it)."""
    import inspect
    import io
    import tokenize

    out: dict[str, list[str]] = {}
    current = None
    toks = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
    for tok in toks:
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in {f.name for f in dataclasses.fields(cls)}:
            current = tok.string
            out.setdefault(current, [])
        elif tok.type == tokenize.COMMENT and current is not None:
            out[current].append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string == "def":
            break
    return out
