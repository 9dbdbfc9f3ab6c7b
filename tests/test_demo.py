import json
import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_demo_config_validation():
    from lrl.demo import DemoConfig

    with pytest.raises(ValueError, match="train_steps"):
        DemoConfig(train_steps=0)
    with pytest.raises(ValueError, match="start"):
        DemoConfig(start="xls-r")


@pytest.mark.slow
@pytest.mark.parametrize(("start", "pretrain_steps"), [("xl-tiny", "2"), ("scratch", "0")])
def test_demo_runs_every_stage_and_prints_the_table(tmp_path, cli, start, pretrain_steps):
    r = cli("demo", "--out", tmp_path / "d", "--train-steps", "10", "--pretrain-steps", pretrain_steps,
            "--n-train", "40", "--start", start)
    assert r.exit_code == 0, r.output
    assert ("skipped (--pretrain-steps N" in r.output) == (pretrain_steps == "0")
    assert "| greedy |" in r.output and "| LM beam |" in r.output
    summary = json.loads((tmp_path / "d" / "demo_summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"corpus", "data", "augment", "pretrain", "train", "lm", "tune", "evaluate"}
    assert 0.0 <= summary["greedy"]["wer"] and "wer" in summary["lm"]
    assert (tmp_path / "d" / "model" / "model.safetensors").is_file()
