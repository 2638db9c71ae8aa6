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
    # docre-predict too, before any output is written, and the Predictor API
    output = tmp_path / "out.json"
    with pytest.raises(DocreError) as error:
        run_main("predict", [str(run_dir), str(ROOT / "tests/fixtures/docred_tiny.json"), "-o", str(output), "--top-k", "2"])
    assert str(error.value) == (f"--top-k 2: loss ssr_pu of {run_dir} decodes with no top-k cap (its official rule), so "
                                "--top-k would change nothing; leave it out")
    assert not output.exists()
    from docre.losses import LOSSES, caps_top_k
    from docre.predict import Predictor

    with pytest.raises(DocreError, match=r"^top_k=2: loss ssr_pu decodes with no top-k cap"):
        Predictor.from_pretrained(run_dir, "cpu").predict("Paris is in France.", top_k=2)
    assert [name for name in LOSSES if not caps_top_k(LOSSES[name])] == ["ssr_pu"]  # every other decode takes top_k
    # and its model card does not promise a cap its decode does not keep (it said "at most 4 relations per entity pair")
    assert run_main("export", [str(run_dir), str(tmp_path / "exported")]) == 0
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "no cap on the relations per entity pair (the loss's own decision rule)." in card
    assert "relations per entity pair." not in card.replace("no cap on the relations per entity pair", "")


def test_the_card_of_a_loss_capping_per_label_space_says_so(tiny_backbone, tmp_path):
    # AMTL's decode keeps top_k relations per label space, so a pair may get more than top_k: the card said "per pair"
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                                    "run_name=amtl-s66", "loss.name=amtl", "train.max_steps=1"])
    run_dir = Path(train(cfg)["run_dir"])
    assert run_main("export", [str(run_dir), str(tmp_path / "exported")]) == 0
    assert "at most 4 relations per label space of an entity pair." in (tmp_path / "exported" / "README.md").read_text()
