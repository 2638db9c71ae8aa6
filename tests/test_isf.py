"""Inference-stage fusion: pseudo-documents, candidate fusion and the dev-tuned threshold against
hand-worked cases (the official rules of YoumiMa/dreeam `get_pseudo_features` / `merge_results`),
and the whole pass on a tiny DREEAM model: the tuned threshold is the F1-best cut on its data."""

import math

import pytest
import torch

from docre.config import load_config
from docre.data.feature import featurize
from docre.inference import predict
from docre.isf import Candidate, best_threshold, candidates, fuse, pseudo_document, run_isf, sentence_groups
from docre.losses import build_loss
from docre.metrics import docred_scores
from tests.conftest import ROOT
from tests.models.test_atlop import features_for, make_model

DOC = {
    "title": "d",
    "sents": [["A", "met", "B", "."], ["C", "lives", "in", "D", "."], ["B", "works", "for", "C", "."]],
    "vertexSet": [
        [{"name": "A", "sent_id": 0, "pos": [0, 1], "type": "PER"}],
        [{"name": "B", "sent_id": 0, "pos": [2, 3], "type": "PER"}, {"name": "B", "sent_id": 2, "pos": [0, 1], "type": "PER"}],
        [{"name": "C", "sent_id": 1, "pos": [0, 1], "type": "PER"}, {"name": "C", "sent_id": 2, "pos": [3, 4], "type": "PER"}],
        [{"name": "D", "sent_id": 1, "pos": [3, 4], "type": "LOC"}],
    ],
}


def test_sentence_groups_add_the_first_mention_and_deduplicate():
    hts = torch.tensor([[0, 3], [1, 2], [2, 1], [3, 0]])
    evidence = torch.tensor([
        [0.1, 0.5, 0.0],  # A-D: evidence {1}; A's first sentence 0 added -> [0, 1]
        [0.0, 0.1, 0.6],  # B-C: {2} mentions both -> [2]
        [0.0, 0.0, 0.9],  # C-B: [2] again -> no new group
        [0.1, 0.1, 0.1],  # D-A: no evidence -> no pseudo-document
    ])
    assert sentence_groups(DOC, evidence, hts, 0.2) == [[0, 1], [2]]


def test_pseudo_document_keeps_mentioned_entities_renumbered():
    pseudo, original = pseudo_document(DOC, [0, 2], "d#0")
    assert pseudo["sents"] == [DOC["sents"][0], DOC["sents"][2]]
    assert original == [0, 1, 2]  # D is mentioned only in sentence 1
    assert [[m["sent_id"] for m in entity] for entity in pseudo["vertexSet"]] == [[0], [0, 1], [1]]
    assert pseudo["vertexSet"][2][0]["pos"] == [3, 4] and "labels" not in pseudo


def test_fuse_follows_the_official_rules():
    original = {"both": Candidate(1.0, True), "mixed": Candidate(0.5, True), "left": Candidate(2.0, True)}
    pseudo = {"both": Candidate(0.3, True), "mixed": Candidate(-0.2, False), "right": Candidate(-1.0, False)}
    kept, scored = fuse(original, pseudo)
    assert kept == {"both"}
    assert scored == [(0.5 - 0.2, "mixed"), (2.0 - 10, "left"), (-1.0 - 10, "right")]


def test_best_threshold_is_the_f1_best_cut():
    scored = [(3.0, "a"), (1.0, "b"), (-2.0, "c"), (-9.0, "d")]
    # kept {k} correct; gold {k, a, c}: cuts give F1 2/4 (none), 4/5 (a), 4/6 (a, b), 6/7 (a, b, c), 6/8
    assert best_threshold({"k"}, scored, {"k", "a", "c"}) == -2.0
    assert best_threshold(set(), scored, {"x"}) == math.inf  # nothing right: keeping none is best


def test_candidates_take_top_k_with_na_as_one_and_keep_the_best_of_repeats(rel2id):
    id2rel = {i: r for r, i in rel2id.items()}
    logits = torch.full((2, 97), -5.0)
    logits[0, [0, 1, 2, 3]] = torch.tensor([1.0, 3.0, 0.5, 2.0])  # NA in the top 3: candidates 1 and 3
    logits[1, [0, 1]] = torch.tensor([0.0, 1.5])
    loss = build_loss("atl")
    found = candidates(["t", "t"], [torch.tensor([[0, 1]]), torch.tensor([[1, 0]])], [logits[:1], logits[1:]], loss, 3,
                       id2rel, entity_maps=[[4, 5], [5, 4]])
    key = ("t", 4, 5, id2rel[1])
    assert found[key] == Candidate(2.0, True)  # 3.0 - 1.0 beats the second pseudo-document's 1.5 - 0.0
    assert found[("t", 4, 5, id2rel[3])] == Candidate(1.0, True)
    assert ("t", 4, 5, id2rel[2]) not in found  # below NA, and NA took the third slot
    assert len(found) == 3  # the second pseudo-document (the same pair): relation 1 again, NA and one -5 relation


def test_tuned_threshold_is_the_best_cut_on_its_data(tiny_backbone, tiny_tokenizer, rel2id, fixture_docs):
    model = make_model(tiny_backbone, tiny_tokenizer, name="dreeam", emb_size=32, block_size=8)
    cfg = load_config(ROOT / "configs/smoke.yaml", ["model.name=dreeam", "model.evidence_threshold=0.25"])
    features = features_for(tiny_tokenizer, rel2id)
    logits, evidence = predict(model, features, 97, 0, 2, torch.device("cpu"), torch.float32, show=False)
    loss = build_loss("atl")
    args = (model, loss, fixture_docs, features, logits, evidence, tiny_tokenizer, rel2id, cfg, torch.device("cpu"),
            torch.float32)
    rows, threshold = run_isf(*args)
    f1 = docred_scores(rows, fixture_docs, fixture_docs)["f1"]
    assert run_isf(*args, threshold=threshold)[0] == rows  # the tuned threshold, given back, decides the same
    for other in (-math.inf, -20.0, -5.0, 0.0, 5.0, math.inf):
        other_rows, used = run_isf(*args, threshold=other)
        assert used == other and docred_scores(other_rows, fixture_docs, fixture_docs)["f1"] <= f1 + 1e-12
    everything, _ = run_isf(*args, threshold=-math.inf)
    assert {(r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in rows} <= {
        (r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in everything}
    pseudo = [g for doc, f, e in zip(fixture_docs, features, evidence) for g in sentence_groups(doc, e, f.hts, 0.25)]
    assert pseudo  # the untrained model's attention gives some pairs evidence, so pseudo-documents ran


@pytest.fixture(scope="module")
def fixture_docs():
    import json

    from tests.conftest import FIXTURES

    return json.loads((FIXTURES / "docred_tiny.json").read_text())


def test_pseudo_documents_featurize(tiny_tokenizer, rel2id):
    pseudo, _ = pseudo_document(DOC, [0, 2], "d#0")
    features, _ = featurize([pseudo], tiny_tokenizer, rel2id, "*", 1024)
    assert len(features[0].hts) == 6 and len(features[0].sent_pos) == 2
