"""TTM-RE's official layout lets the pairs of a batch attend to each other: a train.max_batch_tokens split
changes what it computes, and the run says so in one line (as it does for a loss over whole batches).
Evaluation gives it whole batches by default on every device, and warns once where eval.max_batch_tokens
splits them."""

from pathlib import Path

import torch

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


def test_evaluation_gives_the_official_layout_whole_batches_on_every_device(tiny_backbone, tiny_tokenizer, rel2id,
                                                                           monkeypatch, caplog):
    # eval.max_batch_tokens=-1 caps CPU batches at inference.CPU_TOKEN_BUDGET tokens and leaves GPU ones whole; a
    # model whose pairs attend across the batch would then predict differently on a CPU than on a GPU
    from docre import inference
    from tests.models.test_atlop import features_for
    from tests.models.test_ttm_re import NUM_CLASSES, ttm_model

    features = features_for(tiny_tokenizer, rel2id)
    budget = max(inference.encoded_tokens([f], 512) for f in features)  # each document fits, two together do not
    monkeypatch.setattr(inference, "CPU_TOKEN_BUDGET", budget)
    inference._warn_once.cache_clear()

    def logits(model, max_tokens):
        return torch.cat(inference.predict_logits(model, features, NUM_CLASSES, 0, 8, "cpu", torch.float32,
                                                  show=False, max_tokens=max_tokens))

    official = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6)
    default, whole, capped = logits(official, -1), logits(official, 0), logits(official, budget)
    assert torch.equal(default, whole)  # the CPU default: whole batches, as on a GPU
    assert (capped - whole).abs().max() > 1e-3  # the cap would have changed the predictions
    assert caplog.text.count(f"eval.max_batch_tokens={budget} splits evaluation batches") == 1
    logits(official, budget)  # a second evaluation (after the next epoch) does not repeat it
    assert caplog.text.count("splits evaluation batches") == 1
    per_pair = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6, layout="per_pair")
    torch.testing.assert_close(logits(per_pair, budget), logits(per_pair, 0), atol=1e-5, rtol=1e-5)
    assert caplog.text.count("splits evaluation batches") == 1  # no warning where the batching changes nothing
