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
