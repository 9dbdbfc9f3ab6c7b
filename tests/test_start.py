import json
import shutil
from pathlib import Path

import pytest

from lrl.core.io import LrlError
from lrl.models.checkpoints import SHIPPED, resolve_checkpoint
from lrl.train.build_start import StartConfig, build_crosslingual_start

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_resolve_checkpoint_names_dirs_and_hub_ids(tmp_path, monkeypatch):
    assert resolve_checkpoint("facebook/wav2vec2-xls-r-300m") == "facebook/wav2vec2-xls-r-300m"
    assert resolve_checkpoint("xl-tiny") == str(SHIPPED["xl-tiny"])
    local = tmp_path / "xl-tiny"  # a local directory of that name wins over the shipped one
    local.mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("xl-tiny") == "xl-tiny"


def test_missing_shipped_start_names_the_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setitem(SHIPPED, "xl-tiny", tmp_path / "gone")
    with pytest.raises(LrlError, match="make xl-start"):
        resolve_checkpoint("xl-tiny")


def test_config_validation():
    with pytest.raises(ValueError, match="texts"):
        StartConfig()
    with pytest.raises(ValueError, match="n_per_language"):
        StartConfig(texts={"sw": "grammar"}, n_per_language=0)
    with pytest.raises(ValueError, match="minutes"):
        StartConfig(texts={"sw": "grammar"}, minutes=0)


def test_shipped_start_loads_as_fp32_ctc_and_transfers_shared_rows():
    import torch
    from safetensors import safe_open

    from lrl.models.checkpoints import load_for_ctc, transfer_head

    path = Path(resolve_checkpoint("xl-tiny"))
    with safe_open(str(path / "model.safetensors"), framework="pt") as st:
        stored = st.get_tensor("lm_head.weight")
    src_vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    model = load_for_ctc("xl-tiny", 6)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tokens = ["[PAD]", "[UNK]", "|", "a", "ẹ", "ṣ"]  # Yoruba dotted letters are in none of its languages
    copied = transfer_head(model, tokens, "xl-tiny")
    assert copied[:4] == ["[PAD]", "[UNK]", "|", "a"] and "ẹ" not in copied
    assert torch.equal(model.lm_head.weight[3], stored[src_vocab["a"]].float())


@needs_espeak
def test_build_writes_a_start_that_train_and_head_transfer_accept(tmp_path, shared_data):
    from lrl.models.checkpoints import load_for_ctc, transfer_head

    cfg = StartConfig(texts={"cy": str(shared_data / "lm-text" / "cy.txt"), "sw": "grammar"}, n_per_language=3,
                      n_dev_per_language=1, minutes=0.02, size="test")
    out = build_crosslingual_start(tmp_path / "start", cfg)
    info = json.loads((out / "start.json").read_text())
    assert info["updates"] >= 1 and sorted(info["texts"]) == ["cy", "sw"]
    assert not any(out.glob("checkpoint-*")) and (tmp_path / "start-work" / "corpus" / "manifest.tsv").is_file()
    assert "cy, sw" in (out / "README.md").read_text()
    model = load_for_ctc(out, 5)
    assert "w" in transfer_head(model, ["[PAD]", "[UNK]", "|", "w", "ŵ"], out)  # w: Welsh and Swahili


def test_cli_rejects_malformed_lang(cli, tmp_path):
    r = cli("train", "build-start", tmp_path / "s", "--lang", "cy")
    assert r.exit_code != 0 and "LANG=SENTENCE_FILE" in r.output
    r = cli("train", "build-start", tmp_path / "s", "--lang", f"cy={tmp_path / 'none.txt'}")
    assert r.exit_code != 0 and "no such sentence file" in r.output


def test_fine_tuning_starts_from_the_shipped_start_by_name(tmp_path, shared_data, cli, one_thread):
    import numpy as np
    from corpus_fixtures import make_fsdd_dataset
    from transformers import pipeline

    from lrl.train.config import load_config

    data = make_fsdd_dataset(shared_data / "fsdd", tmp_path / "fsdd", n_train=6, n_dev=2)
    out = tmp_path / "run"
    r = cli("train", "run", "--data", data, "--checkpoint", "xl-tiny", "--init-head-from", "xl-tiny", "--out", out,
            "--max-steps", "3", "--max-seconds", "4", "--set", "eval.eval_steps=3", "--set", "threads=1")
    assert r.exit_code == 0, r.output
    cfg = load_config(out / "train_config.yaml")
    assert cfg.model.checkpoint == cfg.model.init_head_from == "xl-tiny"  # the name: portable across installs
    asr = pipeline("automatic-speech-recognition", model=str(out))
    assert isinstance(asr(np.zeros(16000, np.float32))["text"], str)
