import json
import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_demo_config_validation():
    from lrl.demo import DemoConfig

    with pytest.raises(ValueError, match="train_steps"):
        DemoConfig(train_steps=0)
    with pytest.raises(ValueError, match="train_minutes"):
        DemoConfig(train_minutes=0)


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_the_table(tmp_path, cli):
    r = cli("demo", "--out", tmp_path / "d", "--train-steps", "10", "--pretrain-steps", "2", "--n-train", "40")
    assert r.exit_code == 0, r.output
    assert "| greedy |" in r.output and "| LM beam |" in r.output
    summary = json.loads((tmp_path / "d" / "demo_summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"corpus", "data", "augment", "pretrain", "train", "lm", "tune", "evaluate"}
    assert 0.0 <= summary["greedy"]["wer"] and "wer" in summary["lm"]
    assert (tmp_path / "d" / "model" / "model.safetensors").is_file()
