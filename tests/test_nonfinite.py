"""The NaN/inf guard: a non-finite loss or gradient skips the optimizer step (weights and optimizer
state untouched) and is counted in metrics.jsonl; train.max_nonfinite_steps in a row stop the run
with one line; non-finite weights are never written."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from docre import trainer
from docre.checkpoint import find_training_state, save_training_state, save_weights
from docre.config import load_config
from docre.data.feature import featurize, probe_tokenizer
from docre.errors import DocreError
from docre.losses import LOSSES
from docre.losses.atl import ATLoss
from docre.models import build_model, load_tokenizer
from tests.conftest import FIXTURES, REL2ID
from tests.test_resume import cli

ROOT = Path(__file__).resolve().parent.parent


class _InfGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class Sabotaged(nn.Module):
    """ATL, except on the chosen calls (1-based): a NaN loss, or a finite loss with an inf gradient."""

    def __init__(self, nan_calls: list = (), inf_grad_calls: list = ()):
        super().__init__()
        self.inner, self.calls = ATLoss(), 0
        self.nan_calls, self.inf_grad_calls = set(nan_calls), set(inf_grad_calls)

    def forward(self, logits, labels):
        self.calls += 1
        if self.calls in self.inf_grad_calls:
            logits = _InfGradient.apply(logits)
        loss = self.inner(logits, labels)
        return loss * float("nan") if self.calls in self.nan_calls else loss

    def decode(self, logits, top_k):
        return self.inner.decode(logits, top_k)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- one step
@pytest.fixture(scope="module")
def step_setup(tiny_backbone):
    tokenizer = load_tokenizer(tiny_backbone)
    rel2id = json.loads(REL2ID.read_text())
    features, _ = featurize(json.loads((FIXTURES / "docred_tiny.json").read_text()), tokenizer, rel2id, "*", 1024)
    info = probe_tokenizer(tokenizer, "*")
    return tiny_backbone, features, rel2id, info, tokenizer.pad_token_id


def snapshot(model, optimizer) -> tuple[dict, dict]:
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()}
    return weights, state


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        same(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sabotage", [{"nan_calls": [2]}, {"inf_grad_calls": [2]}], ids=["nan loss", "inf gradient"])
def test_nonfinite_step_changes_nothing(step_setup, sabotage):
    backbone, features, rel2id, info, pad_id = step_setup
    torch.manual_seed(0)
    model = build_model(backbone, len(rel2id), info.start_ids, info.end_ids, emb_size=64, block_size=16)
    cfg = load_config(None).train
    optimizer = trainer.build_optimizer(model, cfg)
    scheduler = trainer.linear_warmup_decay(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_fn = Sabotaged(**sabotage)

    def step():
        return trainer._optimizer_step(model, loss_fn, optimizer, scheduler, scaler, [features[:2]], len(rel2id),
                                       pad_id, torch.device("cpu"), torch.float32, 1.0)

    before = snapshot(model, optimizer)
    _, _, finite = step()  # a good step: it does change weights and optimizer state
    assert finite and not same(snapshot(model, optimizer)[0], before[0])
    before = snapshot(model, optimizer)
    _, _, finite = step()
    assert not finite
    weights, state = snapshot(model, optimizer)
    assert same(weights, before[0]) and same(state, before[1])  # bitwise untouched
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # nothing carried into the next step
    assert scheduler.last_epoch == 2  # the schedule counts the skipped step: it stays aligned with train.step


# ---------------------------------------------------------------------------------------- whole runs
def args(backbone: str, out: Path, *extra: str) -> list[str]:
    return ["configs/smoke.yaml", f"model.backbone={backbone}", f"output_dir={out}", "run_name=run",
            f"data.cache_dir={out / 'cache'}", "data.dev_file=", "data.test_file=", "train.batch_size=1",
            "train.epochs=2", "train.log_every=1", "train.num_threads=1", "loss.name=sabotaged", *extra]


def test_skipped_steps_are_counted_and_the_run_goes_on(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setitem(LOSSES, "sabotaged", Sabotaged)
    cfg = load_config(ROOT / "configs/smoke.yaml", args(tiny_backbone, tmp_path, "loss.nan_calls=[2]",
                                                        "loss.inf_grad_calls=[4]", "train.max_nonfinite_steps=2")[1:])
    results = trainer.train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 2, 2]
    assert [r["loss"] is None for r in rows] == [False, True, False, True, False, False]  # no finite step in the window
    assert [r["grad_norm"] is None for r in rows] == [False, True, False, True, False, False]  # NaN/inf are not JSON
    assert results["skipped_steps"] == 2 and results["steps"] == 6
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 2: non-finite loss or gradient, step skipped (1 in a row)" in log
    assert "step 4: non-finite loss or gradient, step skipped (1 in a row)" in log


def test_too_many_in_a_row_stop_the_run_with_one_line(tmp_path, tiny_backbone, monkeypatch, capsys):
    monkeypatch.setitem(LOSSES, "sabotaged", Sabotaged)
    status = cli(*args(tiny_backbone, tmp_path, "loss.nan_calls=[2,3,4]", "train.max_nonfinite_steps=3", "train.save_every=1"))
    run_dir = tmp_path / "run"
    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: stopped at step 4: 3 non-finite losses or gradients in a row (train.max_nonfinite_steps=3); lower the "
        "learning rate, use fp32 or bf16, or check the data. The last checkpoint (step 3) is in " f"{run_dir / 'last'}.")
    assert find_training_state(run_dir / "last") == run_dir / "last"
    saved = json.loads((run_dir / "last" / "state.json").read_text())["counters"]
    assert (saved["step"], saved["skipped_steps"], saved["nonfinite_in_row"]) == (3, 2, 2)


# ---------------------------------------------------------------------------------------- never saved
def test_nonfinite_weights_are_never_saved(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = trainer.linear_warmup_decay(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    save_weights(model, tmp_path / "best.safetensors")
    save_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, {"step": 1})
    files = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with torch.no_grad():
        model.bias[1] = float("inf")
    for save in (lambda: save_weights(model, tmp_path / "best.safetensors"),
                 lambda: save_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, {"step": 2})):
        with pytest.raises(DocreError) as error:
            save()
        assert str(error.value) == "refusing to save non-finite weights (bias); the previous checkpoint is kept"
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == files  # nothing changed, nothing left over
