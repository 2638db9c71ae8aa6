"""docre-train --list models|losses|keys: every choice of model.name and loss.name (a loss with its
keywords and defaults) and every config key with its default and a description, each read from where
it is defined (MODELS, LOSSES and the config schema's comments), so the lists cannot go stale."""

import dataclasses

import pytest

from docre.config import Config
from docre.losses import LOSSES
from docre.models import MODELS
from tests.cli import run_main


def listed(capsys, what: str) -> dict[str, str]:
    """The --list output as {first column: description}."""
    assert run_main("train", ["--list", what]) == 0
    rows = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def schema_keys(section=Config, prefix="") -> list[str]:
    keys = []
    for f in dataclasses.fields(section):
        if dataclasses.is_dataclass(f.type):
            keys += schema_keys(f.type, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_list_models_names_every_model_with_a_description(capsys):
    rows = listed(capsys, "models")
    assert list(rows) == list(MODELS)
    assert all(rows.values())


def test_list_losses_gives_each_loss_its_keywords_and_defaults(capsys):
    rows = listed(capsys, "losses")
    assert [name.split("(")[0] for name in rows] == list(LOSSES)
    assert "atgl(alpha=16.5," in rows and "bce(threshold=0.5)" in rows \
        and "balanced_softmax(topk_includes_na=False)" in rows
    assert all(rows.values())


def test_list_keys_gives_every_config_key_its_default_and_meaning(capsys):
    rows = listed(capsys, "keys")
    keys = {row.split("=", 1)[0]: (row.split("=", 1)[1], about) for row, about in rows.items()}
    assert set(keys) == {"loss.name" if key == "loss" else key for key in schema_keys()}
    assert [key for key, (_, about) in keys.items() if not about] == []  # every field has its one-line comment
    assert keys["train.epochs"] == ("30", "passes over the training split (see max_steps)")
    assert keys["data.dev_file"] == ("dev.json", '"" = no dev split')
    assert keys["loss.name"][0] == "atl" and keys["model.gradient_checkpointing"][0] == "false"


def test_list_takes_only_known_lists(capsys):
    with pytest.raises(SystemExit):
        run_main("train", ["--list", "datasets"])
    assert "invalid choice" in capsys.readouterr().err
