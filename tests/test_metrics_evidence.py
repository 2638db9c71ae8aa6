"""Evidence P/R/F1 with the official DocRED scorer's semantics (thunlp/DocRED code/evaluation.py):
predicted evidence is summed over every predicted fact, correct evidence over the correct facts
only, gold evidence over every gold fact. Worked by hand below."""

import pytest

from docre.errors import DocreError
from docre.metrics import docred_scores, evidence_scores
from docre.report import results_table


def entity(name, sent_id=0):
    return [{"name": name, "sent_id": sent_id, "pos": [0, 1]}]


GOLD = [
    {"title": "A", "sents": [["w"]] * 4, "vertexSet": [entity("X"), entity("Y"), entity("Z")],
     "labels": [{"h": 0, "t": 1, "r": "P1", "evidence": [0, 1]},
                {"h": 1, "t": 2, "r": "P2", "evidence": [2]},
                {"h": 0, "t": 2, "r": "P3", "evidence": [0, 3]}]},
    {"title": "B", "sents": [["w"]] * 2, "vertexSet": [entity("U"), entity("V")],
     "labels": [{"h": 0, "t": 1, "r": "P1", "evidence": []}]},
]


def row(title, h, t, r, evidence=None):
    return {"title": title, "h_idx": h, "t_idx": t, "r": r} | ({} if evidence is None else {"evidence": evidence})


def test_hand_worked_evidence_scores():
    predictions = [
        row("A", 0, 1, "P1", [0, 2]),  # correct fact: 1 of its 2 sentences is gold evidence (0)
        row("A", 1, 2, "P2", [2]),     # correct fact: 1 of 1
        row("A", 0, 2, "P1", [0, 3]),  # wrong relation (gold is P3): its 2 sentences count as predicted, none correct
        row("B", 0, 1, "P1", [1]),     # correct fact without gold evidence: 1 predicted, 0 correct
    ]
    scores = evidence_scores(predictions, GOLD)
    # predicted 2 + 1 + 2 + 1 = 6; gold 2 + 1 + 2 + 0 = 5 (the unfound P3 fact counts); correct 1 + 1 = 2
    assert (scores["num_evidence_predicted"], scores["num_evidence_gold"], scores["num_evidence_correct"]) == (6, 5, 2)
    assert scores["evidence_precision"] == pytest.approx(2 / 6)
    assert scores["evidence_recall"] == pytest.approx(2 / 5)
    assert scores["evidence_f1"] == pytest.approx(2 * (1 / 3) * 0.4 / (1 / 3 + 0.4))


def test_evidence_of_a_wrong_fact_earns_nothing():
    # the right sentences [0, 3] of the gold P3 fact, given to a prediction with the wrong relation
    scores = evidence_scores([row("A", 0, 2, "P1", [0, 3])], GOLD)
    assert scores["num_evidence_correct"] == 0 and scores["num_evidence_predicted"] == 2
    assert scores["evidence_precision"] == scores["evidence_recall"] == scores["evidence_f1"] == 0.0
    # the same sentences on the right relation are all correct
    right = evidence_scores([row("A", 0, 2, "P3", [0, 3])], GOLD)
    assert right["evidence_precision"] == 1.0 and right["evidence_recall"] == pytest.approx(2 / 5)


def test_repeats_count_once():
    predictions = [
        row("A", 0, 1, "P1", [0]),
        row("A", 0, 1, "P1", [0, 1]),  # the same fact again: the union {0, 1} counts once
        row("A", 1, 2, "P2", [2, 2]),  # a repeated sentence id counts once
    ]
    scores = evidence_scores(predictions, GOLD)
    assert (scores["num_evidence_predicted"], scores["num_evidence_correct"]) == (3, 3)
    gold = [dict(GOLD[0], labels=GOLD[0]["labels"] + [{"h": 0, "t": 1, "r": "P1", "evidence": [1, 3]}])]
    # a gold fact labelled twice: one fact with the union {0, 1, 3} of its evidence
    repeated = evidence_scores([row("A", 0, 1, "P1", [3])], gold)
    assert (repeated["num_evidence_gold"], repeated["num_evidence_correct"]) == (3 + 1 + 2, 1)


def test_no_predicted_evidence_is_absent_not_zero_and_leaves_relation_scores_alone():
    facts = [row("A", 0, 1, "P1"), row("A", 1, 2, "P2", []), row("B", 0, 1, "P1", [])]
    scores = docred_scores(facts, GOLD, [])
    assert scores["evidence_precision"] is scores["evidence_recall"] is scores["evidence_f1"] is None
    assert (scores["num_evidence_predicted"], scores["num_evidence_gold"]) == (0, 5)
    with_evidence = docred_scores([dict(r, evidence=[0, 1]) for r in facts], GOLD, [])
    relation_keys = ("precision", "recall", "f1", "ign_precision", "ign_f1", "num_predicted", "num_gold", "num_correct")
    assert {k: scores[k] for k in relation_keys} == {k: with_evidence[k] for k in relation_keys}
    assert with_evidence["evidence_f1"] > 0


def test_gold_without_evidence_and_no_predictions():
    no_evidence = [{"title": "T", "vertexSet": [entity("a"), entity("b")], "labels": [{"h": 0, "t": 1, "r": "P1"}]}]
    scores = evidence_scores([row("T", 0, 1, "P1", [0])], no_evidence)
    assert scores["evidence_precision"] == scores["evidence_recall"] == scores["evidence_f1"] == 0.0
    empty = evidence_scores([], GOLD)
    assert empty["evidence_f1"] is None and empty["num_evidence_gold"] == 5


def test_perfect_evidence():
    perfect = [row(d["title"], lab["h"], lab["t"], lab["r"], lab["evidence"]) for d in GOLD for lab in d["labels"]]
    scores = docred_scores(perfect, GOLD, [])
    assert scores["f1"] == scores["evidence_precision"] == scores["evidence_recall"] == scores["evidence_f1"] == 1.0


@pytest.mark.parametrize("evidence", ["0,1", [0, "1"], [True], 3])
def test_malformed_predicted_evidence_is_refused(evidence):
    with pytest.raises(DocreError, match=r"prediction 1: evidence: must be a list of sentence indices"):
        evidence_scores([row("A", 0, 1, "P1", [0]), row("A", 1, 2, "P2", evidence)], GOLD)


def test_results_table_shows_evidence_only_when_predicted():
    facts = [row("A", 0, 1, "P1", []), row("A", 1, 2, "P2", [])]
    without = docred_scores(facts, GOLD, [])
    table = results_table({"dev": without, "test": without})
    assert "Evi" not in table and table.splitlines()[0] == "| split | P | R | F1 | Ign F1 |"
    with_evidence = docred_scores([dict(r, evidence=[0]) for r in facts], GOLD, [])
    lines = results_table({"dev": without, "test": with_evidence}).splitlines()
    assert lines[0] == "| split | P | R | F1 | Ign F1 | Evi P | Evi R | Evi F1 |"
    assert lines[2].endswith("| – | – | – |")  # dev predicted no evidence: absent, not 0
    assert lines[3].endswith(f"| 50.00 | {100 / 5:.2f} | {100 * 2 * 0.5 * 0.2 / 0.7:.2f} |")
