"""Where a config error points: a bad key or value given on the command line is reported as that
override, one in the file against the file; a misspelt loss name or loss keyword gets "did you mean",
as a model name does (docre.config.load_config, docre.losses.build_loss)."""

import pytest
from torch import nn

from docre.config import check_loss_kwargs, load_config
from docre.errors import DocreError
from docre.losses import LOSSES, build_loss
from tests.cli import ROOT

CONFIG = ROOT / "configs/redocred_mini/minilm_atgl.yaml"


def message(path, overrides=()) -> str:
    with pytest.raises(DocreError) as error:
        load_config(path, list(overrides))
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("override, expected", [
    ("train.epoch=3", "override 'train.epoch=3': unknown key 'train.epoch' (did you mean train.epochs?)"),
    ("trian.epochs=3", "override 'trian.epochs=3': unknown key 'trian' (did you mean train?)"),
    ("train.epochs=three", "override 'train.epochs=three': train.epochs: Value 'three'"),
    ("model.name=atlp", "override 'model.name=atlp': model.name='atlp' is not one of"),
    ("train.batch_size=0", "override 'train.batch_size=0': train.batch_size must be at least 1"),
    ("loss.name=atg", "override 'loss.name=atg': loss.name='atg' is not one of"),
    ("loss.alpah=3", "override 'loss.alpah=3': loss 'atgl': got an unexpected keyword argument 'alpah' (did you mean alpha?)"),
    ("model.evidence_threshold=1", "override 'model.evidence_threshold=1': model.evidence_threshold must lie in (0, 1)"),
    ("model.emb_size=100", "override 'model.emb_size=100': model.emb_size must be a multiple of model.block_size"),
    # an interpolation resolves only when the merged config is built, still blamed on the override that wrote it
    ("train.epochs=${x}", "override 'train.epochs=${x}': Interpolation key 'x' not found"),
])
def test_a_bad_override_is_reported_as_the_override(override, expected):
    assert message(CONFIG, ["seed=1", override]).startswith(expected)


def test_a_bad_file_entry_is_reported_against_the_file(tmp_path):
    for text, expected in [("train:\n  epoch: 3\n", "unknown key 'train.epoch' (did you mean train.epochs?)"),
                           ("loss:\n  name: atgl\n  alpah: 3\n", "loss 'atgl': got an unexpected keyword argument 'alpah'"),
                           ("model:\n  name: dreeem\n", "model.name='dreeem' is not one of"),
                           ("train:\n  epochs: ${x}\n", "Interpolation key 'x' not found")]:
        (tmp_path / "bad.yaml").write_text(text)
        assert message(tmp_path / "bad.yaml", ["seed=1"]).startswith(f"{tmp_path / 'bad.yaml'}: {expected}")


def test_misspelt_loss_names_and_keywords_get_did_you_mean():
    assert message(CONFIG, ["loss.name=atgll"]).endswith("(did you mean atgl?)")
    assert message(CONFIG, ["loss.name=bce", "loss.treshold=0.4"]).endswith(
        "got an unexpected keyword argument 'treshold' (did you mean threshold?); its keywords: threshold")
    assert message(CONFIG, ["loss.name=balanced_softmax", "loss.alpha=1"]).endswith("its keywords: topk_includes_na")
    with pytest.raises(DocreError, match=r"^unknown loss 'hingabl' \(did you mean hingeabl\?\); available: atl, "):
        build_loss("hingabl")
    with pytest.raises(DocreError, match=r"^loss 'afl': got an unexpected keyword argument 'gama' \(did you mean gamma\?\)"):
        build_loss("afl", gama=2.0)


def test_a_missing_required_loss_keyword_is_named(monkeypatch):
    # no built-in loss has a required keyword, so a registered one that has is made up here
    class Needy(nn.Module):
        def __init__(self, margin: float):
            super().__init__()

    monkeypatch.setitem(LOSSES, "needy", Needy)
    with pytest.raises(DocreError, match=r"^bad\.yaml: loss 'needy' needs loss\.margin$"):
        check_loss_kwargs("needy", {}, "bad.yaml")
    check_loss_kwargs("needy", {"margin": 1.0}, "bad.yaml")
