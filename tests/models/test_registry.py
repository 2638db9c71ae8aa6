"""The model registry: every entry of `MODELS` builds on the tiny random backbone and keeps the
contract the trainer and inference rely on (`RelationModel`: logits [P, C] in `hts` order, the
encoder's parameters under `encoder.`, `window`, `tap`); `model.name` selects the entry, an unknown
name fails in one line listing the known ones, and a saved config without the key loads as atlop."""

import json

import pytest
import torch
import yaml

from docre.config import Config, TrainConfig, load_config, save_config
from docre.data.collate import collate
from docre.data.feature import featurize, probe_tokenizer
from docre.errors import DocreError
from docre.models import MODELS, build_model, build_model_from_config
from docre.models.long_input import encoder_window
from docre.models.output import EvidenceOutput, logits_of
from docre.trainer import build_optimizer
from tests.conftest import FIXTURES

NUM_CLASSES = 97
# Models whose logits depend on the other documents of their batch by design: TTM-RE's official layout
# attends across the pairs of a batch, as its official code does (tests/models/test_ttm_re.py shows
# that, and that its per_pair layout keeps each document's logits its own)
BATCH_DEPENDENT = {"ttm_re"}


@pytest.fixture(scope="module")
def fixture_batch(tiny_tokenizer, rel2id):
    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    features = featurize(docs, tiny_tokenizer, rel2id, "*", 1024)[0]
    return features, collate(features, NUM_CLASSES, tiny_tokenizer.pad_token_id)


def test_the_registry_names_atlop_as_the_default():
    assert "atlop" in MODELS
    assert Config().model.name == "atlop"
    assert all(isinstance(name, str) and name == name.lower() for name in MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_keeps_the_contract(name, tiny_backbone, tiny_tokenizer, fixture_batch):
    features, batch = fixture_batch
    info = probe_tokenizer(tiny_tokenizer, "*")
    torch.manual_seed(0)
    model = build_model(tiny_backbone, NUM_CLASSES, info.start_ids, info.end_ids, emb_size=32, block_size=8, name=name)

    # window: the encoder's position limit when model.window is 0; the fixture has a document longer than it
    assert model.window == encoder_window(model.encoder.config) > 0
    assert max(len(f.input_ids) for f in features) > model.window
    assert callable(getattr(model.tap, "run", None))

    # the encoder is the submodule `encoder`, so exactly its parameters get the encoder learning rate
    names = {n for n, _ in model.named_parameters()}
    encoder_names = {f"encoder.{n}" for n, _ in model.encoder.named_parameters()}
    assert encoder_names and encoder_names <= names and names - encoder_names
    assert all(not n.startswith("encoder.") for n in names - encoder_names)
    optimizer = build_optimizer(model, TrainConfig(encoder_lr=1e-5, head_lr=1e-3))
    encoder_group, head_group = optimizer.param_groups
    assert (encoder_group["lr"], head_group["lr"]) == (1e-5, 1e-3)
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in model.encoder.parameters()}

    # logits [P, C] in the order of the documents' pairs, finite, and differentiable down to the encoder
    model.train()
    output = model(batch)
    logits = logits_of(output)  # DREEAM returns its evidence distributions beside the logits
    if isinstance(output, EvidenceOutput):
        assert output.evidence.shape == (batch.hts.size(0), max(batch.sentences_per_doc))
        assert torch.isfinite(output.evidence).all() and (output.evidence >= 0).all()
    assert logits.shape == (sum(len(f.hts) for f in features), NUM_CLASSES) == (batch.hts.size(0), NUM_CLASSES)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder_group["params"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head_group["params"])
    # each document's logits are its own: the first document alone gives its rows of the batch
    if name in BATCH_DEPENDENT:
        return
    model.eval()
    with torch.no_grad():
        together = logits_of(model(batch))[: len(features[0].hts)]
        alone = logits_of(model(collate(features[:1], NUM_CLASSES, tiny_tokenizer.pad_token_id)))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_gives_the_pair_features_its_logits_are_computed_from(name, tiny_backbone, tiny_tokenizer,
                                                                         fixture_batch):
    """forward(batch, features=True) (what a loss asking for pair features, PEMSCL, gets): the same
    logits, and features from which the classifier reproduces them: ATLOP's group bilinear over the
    head/tail factors (its [P, emb * block] vector built here explicitly), KD-DocRE's linear layer
    over its refined pair cells."""
    _, batch = fixture_batch
    info = probe_tokenizer(tiny_tokenizer, "*")
    torch.manual_seed(0)
    model = build_model(tiny_backbone, NUM_CLASSES, info.start_ids, info.end_ids, emb_size=32, block_size=8,
                        name=name).eval()
    assert model.num_outputs == NUM_CLASSES
    with torch.no_grad():
        plain = logits_of(model(batch))
        output, features = model(batch, features=True)
    torch.testing.assert_close(logits_of(output), plain)
    pairs = batch.hts.size(0)
    if features.vector is not None:
        assert features.vector.shape[0] == pairs
        rebuilt = features.vector @ model.classifier.weight.t() + model.classifier.bias
    else:
        assert features.head.shape == features.tail.shape == (pairs, 32) and features.block_size == 8
        heads, tails = features.head.view(pairs, 4, 8), features.tail.view(pairs, 4, 8)
        bilinear = (heads.unsqueeze(3) * tails.unsqueeze(2)).reshape(pairs, 32 * 8)  # [P, emb * block]
        rebuilt = bilinear @ model.bilinear.weight.t() + model.bilinear.bias
    torch.testing.assert_close(rebuilt, plain, atol=1e-4, rtol=1e-4)


def test_unknown_model_name_fails_before_loading_and_lists_the_models():
    # a backbone folder that does not exist: the name is checked first, so its error is the one raised
    with pytest.raises(DocreError) as error:
        build_model("/nonexistent/backbone/", 3, [1], [2], name="dreeam_v9")
    assert str(error.value) == f"model.name='dreeam_v9' is not one of {', '.join(MODELS)}"


def test_model_name_in_a_config_is_checked_with_a_suggestion(tmp_path):
    assert load_config(None, ["model.name=atlop"]).model.name == "atlop"
    with pytest.raises(DocreError) as error:
        load_config(None, ["model.name=atlpo"])
    message = str(error.value)
    assert message == f"override 'model.name=atlpo': model.name='atlpo' is not one of {', '.join(MODELS)} (did you mean atlop?)"
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  name: ATLOP\n")
    with pytest.raises(DocreError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: model.name='ATLOP' is not one of") and "\n" not in str(error.value)


def test_a_saved_config_without_model_name_loads_as_atlop(tmp_path, tiny_backbone, tiny_tokenizer):
    # a run saved before model.name existed: its config.yaml is today's without that one key
    cfg = load_config(None, [f"model.backbone={tiny_backbone}", "model.emb_size=32", "model.block_size=8"])
    save_config(cfg, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["model"].pop("name") == "atlop"
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump(saved))

    loaded = load_config(old)
    assert loaded.model.name == "atlop"
    assert loaded == cfg  # nothing else changed either
    torch.manual_seed(0)
    model = build_model_from_config(loaded.model, tiny_tokenizer, 5, pretrained=False)
    assert isinstance(model, MODELS["atlop"])
    assert model.bilinear.out_features == 5 and model.emb_size == 32


def test_model_name_selects_the_entry_the_config_names(monkeypatch, tiny_backbone, tiny_tokenizer):
    # a second entry (ATLOP under another name, marked): the config check accepts it, and both
    # build_model_from_config (training, loading a run) and build_model build that entry
    built = []

    def second(encoder, num_classes, shared, **options):
        built.append(num_classes)
        return MODELS["atlop"](encoder, num_classes, shared, **options)

    monkeypatch.setitem(MODELS, "second", second)
    cfg = load_config(None, [f"model.backbone={tiny_backbone}", "model.name=second", "model.emb_size=32", "model.block_size=8"])
    model = build_model_from_config(cfg.model, tiny_tokenizer, 7, pretrained=False)
    assert built == [7] and model.bilinear.out_features == 7
    default = load_config(None, [f"model.backbone={tiny_backbone}", "model.emb_size=32", "model.block_size=8"])
    build_model_from_config(default.model, tiny_tokenizer, 3, pretrained=False)
    assert built == [7]  # the default is atlop, not the other entry
