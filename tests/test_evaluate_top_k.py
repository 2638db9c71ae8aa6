"""docre-evaluate --top-k on a run whose loss decodes with no top-k cap (SSR-PU) is refused in one line,
not silently ignored."""

from pathlib import Path

import pytest

from docre.config import load_config
from docre.errors import DocreError
from docre.trainer import train
from tests.cli import ROOT, run_main


def test_top_k_is_refused_for_a_loss_without_a_top_k_cap(tiny_backbone, tmp_path):
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                                    "run_name=ssr_pu-s66", "loss.name=ssr_pu", "train.max_steps=1"])
    run_dir = Path(train(cfg)["run_dir"])
    with pytest.raises(DocreError) as error:
        run_main("evaluate", [str(run_dir), "--top-k", "1", "--device", "cpu"])
    assert str(error.value) == (f"--top-k 1: loss ssr_pu of {run_dir} decodes with no top-k cap (its official rule), so "
                                "--top-k would change nothing; leave it out")
