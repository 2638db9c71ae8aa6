"""Official DocRED scoring on hand-worked cases: P/R/F1, Ign F1 with a fact seen in training,
repeated and unknown-title predictions, empty predictions, every correct prediction seen in training,
and a split without labels."""

import pytest

from docre.metrics import docred_scores, training_facts


def entity(*names):
    return [{"name": n, "sent_id": 0, "pos": [0, 1]} for n in names]


GOLD = [
    {"title": "A", "vertexSet": [entity("X", "Xavier"), entity("Y"), entity("Z")],
     "labels": [{"h": 0, "t": 1, "r": "P1"}, {"h": 1, "t": 2, "r": "P2"}, {"h": 1, "t": 2, "r": "P2"}]},
    {"title": "B", "vertexSet": [entity("U"), entity("V")], "labels": [{"h": 0, "t": 1, "r": "P1"}]},
]
TRAIN = [{"title": "T", "vertexSet": [entity("Xavier"), entity("Y")], "labels": [{"h": 0, "t": 1, "r": "P1"}]}]


def row(title, h, t, r):
    return {"title": title, "h_idx": h, "t_idx": t, "r": r}


def test_hand_worked_scores_with_ign():
    predictions = [
        row("A", 0, 1, "P1"),  # correct, and (Xavier, Y, P1) is a training fact: seen in training
        row("A", 0, 1, "P1"),  # repeated row: counted once
        row("A", 1, 2, "P2"),  # correct, unseen
        row("A", 0, 2, "P1"),  # wrong
        row("B", 0, 1, "P3"),  # wrong relation
        row("C", 0, 1, "P1"),  # unknown title: wrong
    ]
    scores = docred_scores(predictions, GOLD, TRAIN)
    # 5 distinct predictions, 3 distinct gold facts (the repeated gold label counts once), 2 correct
    assert scores["precision"] == pytest.approx(2 / 5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    # Ign: the seen correct fact leaves numerator and denominator: (2 - 1) / (5 - 1)
    assert scores["ign_precision"] == pytest.approx(1 / 4)
    assert scores["ign_f1"] == pytest.approx(2 * 0.25 * (2 / 3) / (0.25 + 2 / 3))
    assert (scores["num_predicted"], scores["num_gold"], scores["num_correct"], scores["num_correct_in_train"]) == (5, 3, 2, 1)


def test_ign_depends_on_the_training_documents_passed():
    predictions = [row("A", 0, 1, "P1"), row("A", 1, 2, "P2"), row("A", 0, 2, "P1")]
    assert docred_scores(predictions, GOLD, TRAIN)["ign_f1"] < docred_scores(predictions, GOLD, [])["ign_f1"]
    assert docred_scores(predictions, GOLD, [])["ign_f1"] == pytest.approx(docred_scores(predictions, GOLD, [])["f1"])


def test_perfect_and_empty_predictions():
    perfect = [row("A", 0, 1, "P1"), row("A", 1, 2, "P2"), row("B", 0, 1, "P1")]
    assert docred_scores(perfect, GOLD, [])["f1"] == pytest.approx(1.0)
    empty = docred_scores([], GOLD, TRAIN)
    assert empty["precision"] == empty["recall"] == empty["f1"] == empty["ign_f1"] == 0.0


def test_training_facts_use_every_mention_name():
    assert training_facts(TRAIN) == {("Xavier", "Y", "P1")}
    two = [{"vertexSet": [entity("a", "b"), entity("c")], "labels": [{"h": 0, "t": 1, "r": "R"}]}]
    assert training_facts(two) == {("a", "c", "R"), ("b", "c", "R")}


def test_ign_precision_is_zero_when_every_predicted_fact_was_seen_in_training():
    scores = docred_scores([row("A", 0, 1, "P1")], GOLD, TRAIN)  # correct, and (Xavier, Y, P1) is a training fact
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((1.0, 1 / 3, 0.5))
    # Ign precision (1 - 1) / (1 - 1): nothing is left to score, and that scores 0 (ATLOP: 0 / 1e-5), not 1
    assert scores["num_correct_in_train"] == 1
    assert scores["ign_precision"] == 0.0 and scores["ign_f1"] == 0.0


def test_a_split_without_labels_scores_zero_recall():
    unlabelled = [{key: value for key, value in doc.items() if key != "labels"} for doc in GOLD]  # like DocRED's test
    scores = docred_scores([row("A", 0, 1, "P1"), row("B", 0, 1, "P1")], unlabelled, TRAIN)
    assert (scores["num_predicted"], scores["num_gold"], scores["num_correct"]) == (2, 0, 0)
    assert scores["precision"] == scores["recall"] == scores["f1"] == scores["ign_precision"] == scores["ign_f1"] == 0.0
