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
    # a value the loss's constructor refuses: at load, as the override (it used to fail when training built the loss)
    ("loss.alpha=-1", "override 'loss.alpha=-1': loss 'atgl': alpha must be positive, got -1"),
    # only ATGL's alpha is tuned, under either loss that classifies with ATGL
    ("loss.th_offset=auto", "override 'loss.th_offset=auto': loss.th_offset=auto: only ATGL's alpha is tuned on dev "
                            "(loss.alpha=auto with loss.name=atgl, or loss.name=vaediff with classification: atgl)"),
    ("vaediff.copies=3", "override 'vaediff.copies=3': vaediff.copies=3 is read only with model.name=vaediff"),
    # an interpolation resolves only when the merged config is built, still blamed on the override that wrote it
    ("train.epochs=${x}", "override 'train.epochs=${x}': Interpolation key 'x' not found"),
])
def test_a_bad_override_is_reported_as_the_override(override, expected):
    assert message(CONFIG, ["seed=1", override]).startswith(expected)


@pytest.mark.parametrize("override, suggestion", [
    # a key put in the wrong section (or in none) gets the full key of the section that has it
    ("epochs=3", "train.epochs"),
    ("model.epochs=3", "train.epochs"),
    ("batch_size=2", "train.batch_size or eval.batch_size"),
    ("model.batch_size=2", "train.batch_size or eval.batch_size"),  # not the similar model.block_size
    ("train.seed=1", "seed"),
    # a loss keyword, named by any loss, lives in loss.*
    ("alpha=4", "loss.alpha"),
    ("train.alpha=4", "loss.alpha"),
    # a close spelling in another section
    ("epoch=3", "train.epochs"),
    ("train.alph=4", "loss.alpha"),
    # names other trainers use for the two learning rates
    ("train.learning_rate=1e-4", "train.encoder_lr or train.head_lr"),
    ("lr=1e-4", "train.encoder_lr or train.head_lr"),
    # a typo in its own section still gets its own section's key (also the table above)
    ("train.epoch=3", "train.epochs"),
    ("model.layer_poling=last", "model.layer_pooling"),
])
def test_an_unknown_key_suggests_the_key_it_may_mean_in_any_section(override, suggestion):
    key = override.split("=")[0]
    assert message(CONFIG, [override]) == f"override {override!r}: unknown key {key!r} (did you mean {suggestion}?)"


def test_an_unknown_key_with_nothing_close_gets_no_suggestion(tmp_path):
    assert message(CONFIG, ["stale_option=1"]) == "override 'stale_option=1': unknown key 'stale_option'"
    (tmp_path / "bad.yaml").write_text("epochs: 3\n")  # the same hints for a key in the file
    assert message(tmp_path / "bad.yaml") == f"{tmp_path / 'bad.yaml'}: unknown key 'epochs' (did you mean train.epochs?)"


def test_an_empty_training_file_is_named_as_the_key(tmp_path):
    # it would resolve to data.dir itself: "DIR: file not found"
    expected = ("data.train_file is empty: name the training file (a file in data.dir, or a path); "
                "training and evaluation read it")
    assert message(CONFIG, ["data.dir=tests/fixtures", "data.train_file="]) == f"override 'data.train_file=': {expected}"
    (tmp_path / "bad.yaml").write_text("data:\n  train_file: ''\n")
    assert message(tmp_path / "bad.yaml") == f"{tmp_path / 'bad.yaml'}: {expected}"
    assert load_config(CONFIG, ["data.dev_file=", "data.test_file="]).data.dev_file == ""  # those may be empty


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


def test_docs_show_the_unknown_model_message_as_it_is():
    # docs/models.md quotes the line a misspelt model name gives; it went stale when vaediff joined MODELS
    shown = message(None, ["model.name=atlpo"])
    assert shown.startswith("override 'model.name=atlpo': model.name='atlpo' is not one of atlop, ")
    assert f"(`{shown}`)" in (ROOT / "docs/models.md").read_text().replace("\n", " ")
