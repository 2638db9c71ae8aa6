"""TTM-RE's official layout lets the pairs of a batch attend to each other: a train.max_batch_tokens split
changes what it computes, and the run says so in one line (as it does for a loss over whole batches)."""

from pathlib import Path

from docre.config import load_config
from docre.trainer import train
from tests.conftest import ROOT

WARNING = "model ttm_re's official layout lets the pairs of a batch attend to each other, and train.max_batch_tokens=100"


def log_of(backbone: str, out: Path, name: str, *overrides: str) -> str:
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={out}", f"run_name={name}",
                                                    "model.name=ttm_re", "train.max_steps=1", *overrides])
    return (Path(train(cfg)["run_dir"]) / "train.log").read_text()


def test_a_split_batch_of_the_official_ttm_layout_warns(tiny_backbone, tmp_path):
    assert WARNING in log_of(tiny_backbone, tmp_path, "official-s66", "train.max_batch_tokens=100")
    assert "official layout lets" not in log_of(tiny_backbone, tmp_path, "whole-s66")  # whole batches
    assert "official layout lets" not in log_of(tiny_backbone, tmp_path, "per_pair-s66", "train.max_batch_tokens=100",
                                                "model.ttm_layout=per_pair")  # each pair on its own
