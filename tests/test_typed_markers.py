"""model.marker=typed, DocuNet's typed entity markers (github.com/zjunlp/DocuNet, prepro.py, BERT path):
a small document tokenises as worked out by hand, real documents as a per-word loop written from the
official preprocessing, a vocabulary without [unusedN] and an unknown entity type fail in one line, a
misspelt "typed" fails when the config loads, the feature cache keeps the two marker kinds apart,
every model runs on typed features, and a trained DocuNet run's evaluate and predict rebuild the same
features (and its decode keyword)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import docre.data
import docre.predict
from docre.config import load_config
from docre.data import load_split
from docre.data.collate import collate
from docre.data.feature import featurize, probe_tokenizer
from docre.errors import DocreError
from docre.models import MODELS, build_model
from docre.models.output import logits_of
from docre.predict import Predictor
from docre.trainer import train
from tests.conftest import FIXTURES, ROOT

NUM_CLASSES = 97
# DocuNet's prepro.py (read_docred, transformers == "bert"): a mention's marker is [unused i] before it and
# [unused i+50] after it, i its type's index in this list
DOCUNET_TYPES = ["-", "ORG", "-", "LOC", "-", "TIME", "-", "PER", "-", "MISC", "-", "NUM"]


def small_doc() -> dict:
    return {
        "title": "small",
        "sents": [["Alpha", "works", "for", "Beta", "."], ["Beta", "lives", "in", "the", "city", "."]],
        "vertexSet": [
            [{"name": "Alpha", "sent_id": 0, "pos": [0, 1], "type": "PER"}],
            [{"name": "Beta", "sent_id": 0, "pos": [3, 4], "type": "ORG"},
             {"name": "Beta", "sent_id": 1, "pos": [0, 1], "type": "ORG"}],
            [{"name": "the city", "sent_id": 1, "pos": [3, 5], "type": "LOC"}],
        ],
        "labels": [{"h": 0, "t": 1, "r": "P108", "evidence": [0]}],
    }


def docunet_reference(doc: dict, tokenizer, max_seq_length: int = 1024) -> tuple[list[int], list[list[int]]]:
    """DocuNet's BERT preprocessing written out plainly: one tokenize() per word, the typed marker of the
    first mention (vertexSet order) that starts or ends at a word, entity positions at the opening markers."""
    starts, ends = [], []  # ((sent, word), type) in vertexSet order, as DocuNet's entity_start / entity_end
    for entity in doc["vertexSet"]:
        for m in entity:
            starts.append(((m["sent_id"], m["pos"][0]), m["type"]))
            ends.append(((m["sent_id"], m["pos"][1] - 1), m["type"]))
    tokens, word_maps = [], []
    for s, sent in enumerate(doc["sents"]):
        word_map = {}
        for w, word in enumerate(sent):
            pieces = tokenizer.tokenize(word)
            opening = [kind for at, kind in starts if at == (s, w)]
            closing = [kind for at, kind in ends if at == (s, w)]
            if opening:
                pieces = [f"[unused{DOCUNET_TYPES.index(opening[0])}]"] + pieces
            if closing:
                pieces = pieces + [f"[unused{DOCUNET_TYPES.index(closing[0]) + 50}]"]
            word_map[w] = len(tokens)
            tokens.extend(pieces)
        word_maps.append(word_map)
    tokens = tokens[: max_seq_length - 2]
    input_ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokens) + [tokenizer.sep_token_id]  # BERT's
    entity_pos = [[word_maps[m["sent_id"]][m["pos"][0]] + 1 for m in entity
                   if word_maps[m["sent_id"]][m["pos"][0]] < len(tokens)] for entity in doc["vertexSet"]]
    return input_ids, entity_pos


def test_a_small_document_tokenises_as_worked_out_by_hand(typed_tokenizer, rel2id):
    feature = featurize([small_doc()], typed_tokenizer, rel2id, "typed", 1024)[0][0]
    assert typed_tokenizer.convert_ids_to_tokens(feature.input_ids.tolist()) == [
        "[CLS]", "[unused7]", "alpha", "[unused57]", "works", "for", "[unused1]", "beta", "[unused51]", ".",
        "[unused1]", "beta", "[unused51]", "lives", "in", "[unused3]", "the", "city", "[unused53]", ".", "[SEP]",
    ]
    assert feature.entity_pos == [[1], [6, 10], [15]]  # the opening markers, which the models pool
    # the plain marker gives the same layout with "*" in every marker slot
    plain = featurize([small_doc()], typed_tokenizer, rel2id, "*", 1024)[0][0]
    assert plain.entity_pos == feature.entity_pos and len(plain.input_ids) == len(feature.input_ids)
    assert np.array_equal(plain.sent_pos, feature.sent_pos)


def test_the_type_to_marker_map_is_docunets(typed_tokenizer):
    typed = probe_tokenizer(typed_tokenizer, "typed").typed_marker_ids
    assert sorted(typed) == sorted({"PER", "ORG", "LOC", "TIME", "NUM", "MISC"})
    for kind, (opening, closing) in typed.items():
        index = DOCUNET_TYPES.index(kind)
        assert typed_tokenizer.convert_ids_to_tokens(opening + closing) == [f"[unused{index}]", f"[unused{index + 50}]"]


def test_mentions_sharing_a_word_take_the_first_mentions_type(typed_tokenizer, rel2id):
    doc = small_doc()
    doc["vertexSet"].append([{"name": "Beta", "sent_id": 1, "pos": [0, 1], "type": "MISC"}])  # a second reading of "Beta"
    feature = featurize([doc], typed_tokenizer, rel2id, "typed", 1024)[0][0]
    tokens = typed_tokenizer.convert_ids_to_tokens(feature.input_ids.tolist())
    assert tokens[10:13] == ["[unused1]", "beta", "[unused51]"]  # ORG: entity 1 comes first; one marker, as DocuNet
    assert feature.entity_pos[3] == [10]
    assert featurize([doc], typed_tokenizer, rel2id, "typed", 1024)[0][0].input_ids.tolist() == \
        docunet_reference(doc, typed_tokenizer)[0]


def test_real_documents_match_docunets_preprocessing(minilm_tokenizer, rel2id, redocred_dev):
    docs = redocred_dev[:20]
    for max_seq_length in (1024, 200):
        features, _ = featurize(docs, minilm_tokenizer, rel2id, "typed", max_seq_length)
        for doc, feature in zip(docs, features):
            input_ids, entity_pos = docunet_reference(doc, minilm_tokenizer, max_seq_length)
            assert feature.input_ids.tolist() == input_ids, doc["title"]
            assert feature.entity_pos == entity_pos, doc["title"]


def test_a_vocabulary_without_unused_tokens_fails_in_one_line(tiny_tokenizer, rel2id):
    with pytest.raises(DocreError, match=r"model\.marker=typed needs the tokens \[unused1\]\.\.\[unused61\]") as error:
        featurize([small_doc()], tiny_tokenizer, rel2id, "typed", 1024)
    assert "\n" not in str(error.value) and "model.marker='*'" in str(error.value)


@pytest.mark.parametrize("kind", ["Chemical", None])
def test_an_entity_type_without_a_typed_marker_fails_in_one_line(typed_tokenizer, rel2id, kind):
    doc = small_doc()
    doc["vertexSet"][2][0]["type"] = kind
    if kind is None:
        del doc["vertexSet"][2][0]["type"]  # a mention without a type
    with pytest.raises(DocreError, match=f"document 'small': a mention of type {kind!r} .*model.marker='\\*'") as error:
        featurize([doc], typed_tokenizer, rel2id, "typed", 1024)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["typd", "Typed", "type", "typed_markers"])
def test_a_misspelt_typed_fails_when_the_config_loads(value):
    with pytest.raises(DocreError, match=f"model.marker={value!r} is too close to 'typed'.*did you mean typed"):
        load_config(None, [f"model.marker={value}"])
    assert load_config(None, ["model.marker=typed"]).model.marker == "typed"
    assert load_config(None, ["model.marker=$"]).model.marker == "$"  # other markers stay literal


def test_the_feature_cache_keeps_typed_and_plain_markers_apart(tmp_path, typed_tokenizer, rel2id, monkeypatch):
    (tmp_path / "docs.json").write_text(json.dumps([small_doc()]))

    def load(marker):
        return load_split("x", "docred", "docs.json", str(tmp_path), typed_tokenizer, rel2id, marker, 1024,
                          str(tmp_path / "cache")).features[0]

    plain, typed = load("*"), load("typed")
    assert plain.input_ids.tolist() != typed.input_ids.tolist()
    monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: pytest.fail("cache miss"))
    assert load("typed").input_ids.tolist() == typed.input_ids.tolist()
    assert load("*").input_ids.tolist() == plain.input_ids.tolist()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_on_typed_features(name, typed_backbone, typed_tokenizer, rel2id):
    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    features = featurize(docs, typed_tokenizer, rel2id, "typed", 1024)[0]
    info = probe_tokenizer(typed_tokenizer, "typed")
    openings = {ids[0] for ids, _ in info.typed_marker_ids.values()}
    assert all(f.input_ids[p] in openings for f in features for entity in f.entity_pos for p in entity)
    torch.manual_seed(0)
    model = build_model(typed_backbone, NUM_CLASSES, info.start_ids, info.end_ids, emb_size=32, block_size=8, name=name)
    batch = collate(features, NUM_CLASSES, typed_tokenizer.pad_token_id)
    logits = logits_of(model(batch))
    assert logits.shape == (sum(len(f.hts) for f in features), NUM_CLASSES) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_a_trained_run_rebuilds_typed_features_for_evaluate_and_predict(typed_backbone, typed_tokenizer, rel2id, tmp_path,
                                                                       monkeypatch, capsys):
    # the DocuNet configs' settings: typed markers, balanced softmax with DocuNet's decode
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={typed_backbone}", f"output_dir={tmp_path}",
                                                    "model.marker=typed", "train.max_steps=3", "model.name=docunet",
                                                    "loss.name=balanced_softmax", "loss.topk_includes_na=true"])
    run_dir = train(cfg)["run_dir"]
    saved = load_config(f"{run_dir}/config.yaml")
    assert saved.model.marker == "typed" and saved.loss == {"name": "balanced_softmax", "topk_includes_na": True}
    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    expected = [f.input_ids.tolist() for f in featurize(docs, typed_tokenizer, rel2id, "typed", 1024)[0]]

    # evaluate.py, with an empty feature cache so that it featurises again
    built = []
    featurize_once = docre.data.featurize
    monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: built.append(featurize_once(*a, **k)) or built[-1])
    monkeypatch.setenv("DOCRE_CACHE", str(tmp_path / "fresh_cache"))
    monkeypatch.setattr(sys, "argv", ["evaluate.py", run_dir, "--json"])
    from docre.cli import evaluate

    assert evaluate.main() == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [f.input_ids.tolist() for f in built[0][0]] == expected
    logged = json.loads((Path(run_dir) / "best.json").read_text())
    assert all(scores[key] == logged[key] for key in ("precision", "recall", "f1", "num_predicted"))

    # the Predictor (docre-predict) featurises its input itself
    seen = []
    featurize_predict = docre.predict.featurize
    monkeypatch.setattr(docre.predict, "featurize", lambda *a, **k: seen.append(featurize_predict(*a, **k)) or seen[-1])
    predictor = Predictor.from_pretrained(run_dir, device="cpu")
    assert predictor.loss_fn.topk_includes_na is True
    rows = predictor.leaderboard_rows(docs)
    assert [f.input_ids.tolist() for f in seen[0][0]] == expected
    saved = json.loads((Path(run_dir) / "dev_predictions.json").read_text())
    assert sorted((r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in rows) == \
        sorted((r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in saved)


def test_the_docunet_bert_configs_use_typed_markers():
    bert = sorted(ROOT.glob("configs/*/bert_docunet_*.yaml"))
    assert len(bert) >= 4
    assert all(load_config(path).model.marker == "typed" for path in bert)
    # RoBERTa's vocabulary has no [unusedN]: those configs keep "*", the marker of DocuNet's non-BERT branch
    assert all(load_config(path).model.marker == "*" for path in ROOT.glob("configs/*/roberta_docunet_*.yaml"))
