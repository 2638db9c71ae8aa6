"""load_weights: a checkpoint must fit the model exactly, except for the weights of the encoder's
pooler, which docre no longer builds (build_model sets it to None) but which run directories and
exported folders written before still carry. torch skips the keys of a submodule set to None, so
those load; any other surplus or missing weight is a one-line error."""

import pytest
import torch

from docre.checkpoint import load_weights
from docre.data.feature import probe_tokenizer
from docre.errors import DocreError
from docre.models import build_model
from docre.utils import atomic_save_safetensors


def pooler_less_model(backbone, tokenizer):
    info = probe_tokenizer(tokenizer, "*")
    torch.manual_seed(0)
    model = build_model(backbone, 5, info.start_ids, info.end_ids, emb_size=32, block_size=8)
    model.encoder.pooler = None  # what build_model does now (a no-op there); older builds kept the pooler
    return model


def old_checkpoint(model) -> dict[str, torch.Tensor]:
    """The model's weights, shifted (so loading visibly changes them), plus the pooler an older
    build saved."""
    hidden = model.encoder.config.hidden_size
    state = {name: tensor + 1 if tensor.is_floating_point() else tensor.clone() for name, tensor in model.state_dict().items()}
    assert not any(name.startswith("encoder.pooler.") for name in state)
    return {**state, "encoder.pooler.dense.weight": torch.randn(hidden, hidden), "encoder.pooler.dense.bias": torch.randn(hidden)}


def test_weights_saved_with_the_pooler_load_into_a_model_without_it(tiny_backbone, tiny_tokenizer, tmp_path):
    model = pooler_less_model(tiny_backbone, tiny_tokenizer)
    saved = old_checkpoint(model)
    atomic_save_safetensors(saved, tmp_path / "best.safetensors")
    load_weights(model, tmp_path / "best.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


@pytest.mark.parametrize("change, message", [
    (lambda state: {**state, "head.stray": torch.zeros(2)}, r"unexpected \['head\.stray'\]"),
    (lambda state: {k: v for k, v in state.items() if k != "bilinear.weight"}, r"missing \['bilinear\.weight'\]"),
])
def test_other_misfits_are_still_refused(tiny_backbone, tiny_tokenizer, tmp_path, change, message):
    model = pooler_less_model(tiny_backbone, tiny_tokenizer)
    state = change(old_checkpoint(model))
    atomic_save_safetensors(state, tmp_path / "best.safetensors")
    with pytest.raises(DocreError, match=message) as error:
        load_weights(model, tmp_path / "best.safetensors")
    assert "\n" not in str(error.value) and "pooler" not in str(error.value)


def test_a_damaged_training_state_is_one_line(tmp_path):
    from docre.checkpoint import load_training_state, save_training_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    save_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, {"step": 1})
    (tmp_path / "last" / "state.json").write_text("{}")  # valid JSON without the optimizer's state
    with pytest.raises(DocreError, match=r"last: cannot restore the training state \('optimizer'\)"):
        load_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, 0, torch.device("cpu"))
