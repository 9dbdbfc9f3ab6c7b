import subprocess
import sys
import time

from lrl.cli import app

GROUPS = ("vocab", "data", "augment", "train", "pretrain", "lm", "evaluate", "transcribe", "demo", "doctor")


def test_help_lists_every_stage(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for g in GROUPS:
        assert g in r.output


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from lrl.cli import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert time.perf_counter() - t0 < 5


def test_package_surface_loads_lazily_without_torch():
    code = ("import sys, lrl; assert 'torch' not in sys.modules; "
            "[getattr(lrl, n) for n in lrl.__all__]; print('torch' in sys.modules, lrl.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "0.1.0"]


def test_doctor_reports_tools(cli):
    r = cli("doctor")
    for name in ("torch", "transformers", "datasets", "ffmpeg", "lmplz", "build_binary", "kenlm", "pyctcdecode"):
        assert name in r.output
    assert r.exit_code in (0, 1)
    assert (r.exit_code == 0) == ("FAIL" not in r.output)


def test_doctor_names_the_fix_when_lmplz_is_missing(monkeypatch, cli):
    import lrl.doctor

    real = lrl.doctor.find_tool
    monkeypatch.setattr(lrl.doctor, "find_tool", lambda n: None if n == "lmplz" else real(n))
    r = cli("doctor")
    assert r.exit_code == 1
    assert "make setup" in r.output


def test_app_is_the_console_script():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["lrl"] == "lrl.cli:app"
    assert app.info.name == "lrl"


def test_data_card_lands_inside_the_output_unless_card_dir_says_otherwise(yo_cv, tmp_path, cli, monkeypatch):
    from corpus_fixtures import copy_cv

    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ds"
    r = cli("data", "prepare", src, "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "data_cards" / f"{src.name}.md").is_file() and not (tmp_path / "data_cards").exists()
    assert f"card: {out / 'data_cards' / src.name}.md" in r.output
    assert cli("data", "card", out, "--name", "again").exit_code == 0
    assert (out / "data_cards" / "again.md").is_file() and not (tmp_path / "data_cards").exists()
    r = cli("data", "prepare", src, "--out", out, "--card-dir", tmp_path / "cards")
    assert r.exit_code == 0 and "reused" in r.output
    assert (tmp_path / "cards" / f"{src.name}.md").is_file() and (tmp_path / "cards" / f"{src.name}_durations.png").is_file()


# ------------------------------------------------------------------------------------ defaults in sync
def _ints(text):
    return tuple(int(x) for x in text.split(",")) if text else ()


def _floats(text):
    return tuple(float(x) for x in text.split(","))


def _config_sources():
    """Command -> (where its defaults live: config dataclasses and library functions, in order; option name ->
    field name, or (field name, how the option's default becomes the field's value))."""
    from lrl.augment.preview import preview
    from lrl.core.text import NormalizerConfig
    from lrl.data.merge import merge_shards
    from lrl.data.prepare import PrepareConfig
    from lrl.data.vocab import VocabBuildConfig
    from lrl.decode.lm import LMBuildConfig
    from lrl.demo import DemoConfig
    from lrl.evaluate.labels import CheckLabelsConfig
    from lrl.evaluate.pseudo import PseudoLabelConfig
    from lrl.evaluate.scoring import EvaluateConfig
    from lrl.evaluate.scoring import evaluate as run_evaluate
    from lrl.evaluate.select import SelectConfig, select
    from lrl.evaluate.transcribe import TranscribeConfig
    from lrl.evaluate.tuning import TuneConfig, tune
    from lrl.models.checkpoints import init_tiny, load_for_ctc
    from lrl.report import ReportConfig
    from lrl.train.batching import find_max_seconds
    from lrl.train.build_start import StartConfig
    from lrl.train.pretrain import PretrainConfig, run_pretraining

    def negated(field):
        return (field, lambda v: not v)

    return {
        "vocab build": ([NormalizerConfig, VocabBuildConfig], {}),
        "data prepare": ([PrepareConfig], {"splits": ("splits", lambda v: tuple(v.split(",")))}),
        "data merge": ([merge_shards], {}),
        "data check-labels": ([CheckLabelsConfig], {}),
        "data select": ([SelectConfig, select], {}),
        "augment preview": ([preview], {}),
        "train init-tiny": ([init_tiny], {}),
        "train build-start": ([StartConfig], {"per_language": "n_per_language", "fp32": negated("half")}),
        "train find-batch": ([find_max_seconds, load_for_ctc], {}),
        "lm build": ([LMBuildConfig], {"prune": ("prune", _ints)}),
        "lm tune": ([TuneConfig, tune], {"alphas": ("alphas", _floats), "betas": ("betas", _floats),
                                          "beam_widths": ("beam_widths", lambda v: tuple(map(int, _ints(v))))}),
        "pretrain": ([PretrainConfig, run_pretraining], {
            "steps": "max_steps", "lr": "learning_rate", "warmup": "warmup_steps", "mask_prob": "mask_time_prob",
            "mask_length": "mask_time_length", "negatives": "num_negatives", "split": "splits"}),
        "evaluate": ([EvaluateConfig, run_evaluate], {"workers": "lm_workers", "no_lm": negated("use_lm")}),
        "transcribe": ([TranscribeConfig], {"no_lm": negated("use_lm")}),
        "pseudo-label": ([PseudoLabelConfig], {"no_lm": negated("use_lm")}),
        "demo": ([DemoConfig], {}),
        "report": ([ReportConfig], {}),
    }


# Options with a default that belongs to the command itself (what to print or write), not to a library call.
CLI_ONLY = {
    "data prepare": {"card"},  # write a data card after preparing
    "data merge": {"card"},  # write a data card after merging
    "augment preview": {"preset", "specaugment"},  # which presets the preview shows (preview takes configs)
    "train find-batch": {"vocab_size", "data"},  # the CTC head and the data the memory is measured for
    "transcribe": {"json_out"},  # output format
    "evaluate": {"report"},  # also write the error-analysis page
    "report": {"out"},  # the page's path
}
NO_CONFIG = {"doctor", "vocab audit", "data card", "augment presets", "train run", "train config"}


def _commands():
    """(name, callback) of every command of the app, sub-apps included ("lm build")."""
    from typer.main import get_command_name

    def walk(typer_app, prefix):
        for c in typer_app.registered_commands:
            yield (prefix + (c.name or get_command_name(c.callback.__name__))).strip(), c.callback
        for g in typer_app.registered_groups:
            yield from walk(g.typer_instance, f"{prefix}{g.name} ")

    return list(walk(app, ""))


def _source_defaults(source):
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(source):
        return {f.name: f.default for f in dataclasses.fields(source) if f.default is not dataclasses.MISSING}
    return {n: p.default for n, p in inspect.signature(source).parameters.items() if p.default is not p.empty}


def _plain(value):
    from enum import Enum
    from pathlib import Path

    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def test_every_option_default_is_the_library_default():
    """Each option of a command that builds a config (or calls a library function) defaults to that config
    field's (or argument's) default: the CLI reads them, this test catches a copy that drifts."""
    import inspect

    sources = _config_sources()
    commands = dict(_commands())
    assert set(commands) == set(sources) | NO_CONFIG, "classify a new command in _config_sources or NO_CONFIG"
    checked, problems = 0, []
    for name, (objs, renames) in sources.items():
        library = {}
        for obj in reversed(objs):  # the first source wins
            library.update(_source_defaults(obj))
        for param, p in inspect.signature(commands[name]).parameters.items():
            if p.default is inspect.Parameter.empty or param in CLI_ONLY.get(name, ()):
                continue
            field, convert = renames.get(param, param), _plain
            if isinstance(field, tuple):
                field, convert = field
            if field not in library:
                if p.default is not None:  # None: an optional input such as --lm, not a setting
                    problems.append(f"lrl {name} --{param}: {p.default!r} but no library default (CLI_ONLY?)")
                continue
            if convert(_plain(p.default)) != _plain(library[field]):
                problems.append(f"lrl {name} --{param}: {p.default!r}, library {field}={library[field]!r}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 60, checked
