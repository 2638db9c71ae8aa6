"""CDR/GDA binary F1 and the DocRED breakdowns (intra/inter-sentence, frequent/long-tail, per
relation) on hand-worked cases, their invariants on real Re-DocRED documents, the dataset dispatch
and the report tables."""

import random

import pytest

from docre.metrics import (
    binary_scores,
    breakdown,
    docred_scores,
    frequency_scores,
    frequent_relations,
    intra_inter_scores,
    per_relation_scores,
    score,
)
from docre.report import breakdown_table, per_relation_table, results_table


def row(title, h, t, r):
    return {"title": title, "h_idx": h, "t_idx": t, "r": r}


def mentions(*sentences):
    return [{"name": f"m{s}", "sent_id": s, "pos": [0, 1]} for s in sentences]


def f1(p, r):
    return 2 * p * r / (p + r)


# ------------------------------------------------------------------------------------ CDR / GDA
BIO_GOLD = [
    {"title": "P1", "vertexSet": [mentions(0), mentions(0), mentions(1)], "pairs": [[0, 1], [0, 2], [1, 2]],
     "pair_cross": [False, True, False], "labels": [{"h": 0, "t": 1, "r": "CID"}, {"h": 0, "t": 2, "r": "CID"}]},
    {"title": "P2", "vertexSet": [mentions(0), mentions(1)], "pairs": [[1, 0]], "pair_cross": [True],
     "labels": [{"h": 1, "t": 0, "r": "CID"}]},
]
BIO_PREDICTIONS = [
    row("P1", 0, 1, "CID"),  # correct, intra
    row("P1", 0, 1, "CID"),  # repeated: counted once
    row("P1", 1, 2, "CID"),  # wrong, intra
    row("P2", 1, 0, "CID"),  # correct, inter
    row("P1", 2, 0, "CID"),  # not a candidate pair: wrong overall, in neither split
]


def test_binary_scores_by_hand():
    scores = binary_scores(BIO_PREDICTIONS, BIO_GOLD)
    # overall: 4 distinct predictions, 3 gold positives, 2 correct
    assert (scores["num_predicted"], scores["num_gold"], scores["num_correct"]) == (4, 3, 2)
    assert scores["precision"] == pytest.approx(1 / 2) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(f1(1 / 2, 2 / 3))
    # intra (NON-CROSS): predicted P1(0,1), P1(1,2); gold P1(0,1)
    assert (scores["intra_num_predicted"], scores["intra_num_gold"], scores["intra_num_correct"]) == (2, 1, 1)
    assert scores["intra_precision"] == pytest.approx(1 / 2) and scores["intra_recall"] == 1.0
    assert scores["intra_f1"] == pytest.approx(2 / 3)
    # inter (CROSS): predicted P2(1,0); gold P1(0,2), P2(1,0)
    assert (scores["inter_num_predicted"], scores["inter_num_gold"], scores["inter_num_correct"]) == (1, 2, 1)
    assert scores["inter_precision"] == 1.0 and scores["inter_recall"] == pytest.approx(1 / 2)
    assert "ign_f1" not in scores


def test_binary_edge_cases():
    empty = binary_scores([], BIO_GOLD)
    assert empty["f1"] == empty["intra_f1"] == empty["inter_f1"] == 0.0 and empty["num_gold"] == 3
    perfect = [row("P1", 0, 1, "CID"), row("P1", 0, 2, "CID"), row("P2", 1, 0, "CID")]
    scores = binary_scores(perfect, BIO_GOLD)
    assert scores["f1"] == scores["intra_f1"] == scores["inter_f1"] == 1.0


def test_score_dispatches_by_dataset():
    assert score("cdr", BIO_PREDICTIONS, BIO_GOLD, []) == binary_scores(BIO_PREDICTIONS, BIO_GOLD)
    assert score("gda", BIO_PREDICTIONS, BIO_GOLD, []) == binary_scores(BIO_PREDICTIONS, BIO_GOLD)
    assert score("docred", PREDICTIONS, GOLD, TRAIN) == docred_scores(PREDICTIONS, GOLD, TRAIN)


def test_bio_breakdown_repeats_the_cross_split():
    details = breakdown("cdr", BIO_PREDICTIONS, BIO_GOLD, [])
    flat = binary_scores(BIO_PREDICTIONS, BIO_GOLD)
    assert details["intra"]["f1"] == flat["intra_f1"] and details["inter"]["num_gold"] == flat["inter_num_gold"]
    assert "frequent" not in details and list(details["per_relation"]) == ["CID"]


# ------------------------------------------------------------------------------------ DocRED family
# entity 0 is in sentence 0, entity 1 in sentences 0 and 2, entity 2 in sentence 1
GOLD = [{"title": "A", "vertexSet": [mentions(0), mentions(0, 2), mentions(1)],
         "labels": [{"h": 0, "t": 1, "r": "P1"}, {"h": 1, "t": 2, "r": "P2"}, {"h": 0, "t": 2, "r": "P3"}]}]
PREDICTIONS = [
    row("A", 0, 1, "P1"),  # correct, intra (sentence 0)
    row("A", 0, 2, "P3"),  # correct, inter
    row("A", 1, 0, "P1"),  # wrong, intra
    row("A", 1, 2, "P9"),  # wrong, inter
    row("Z", 0, 1, "P1"),  # unknown document: wrong, in neither split
    row("A", 5, 0, "P1"),  # unknown entity: wrong, in neither split
]
# relation counts in training: P1 3, P2 2, P3 2 (the repeated label counts once), P4 1
TRAIN = [
    {"title": "T1", "vertexSet": [mentions(0)] * 3,
     "labels": [{"h": 0, "t": 1, "r": "P1"}, {"h": 1, "t": 2, "r": "P1"}, {"h": 0, "t": 2, "r": "P3"},
                {"h": 0, "t": 2, "r": "P3"}, {"h": 2, "t": 0, "r": "P2"}]},
    {"title": "T2", "vertexSet": [mentions(0)] * 2,
     "labels": [{"h": 0, "t": 1, "r": "P1"}, {"h": 1, "t": 0, "r": "P2"}, {"h": 1, "t": 0, "r": "P3"},
                {"h": 0, "t": 1, "r": "P4"}]},
]


def test_intra_inter_by_hand():
    parts = intra_inter_scores(PREDICTIONS, GOLD)
    intra, inter = parts["intra"], parts["inter"]
    assert (intra["num_predicted"], intra["num_gold"], intra["num_correct"]) == (2, 1, 1)
    assert intra["precision"] == pytest.approx(0.5) and intra["recall"] == 1.0 and intra["f1"] == pytest.approx(2 / 3)
    assert (inter["num_predicted"], inter["num_gold"], inter["num_correct"]) == (2, 2, 1)
    assert inter["precision"] == inter["recall"] == inter["f1"] == pytest.approx(0.5)


def test_intra_inter_leaves_out_entities_past_either_end():
    # document A has entities 0..2: index 3 (= its length) and -1 name none, and must not index the list
    outside = [row("A", 3, 0, "P1"), row("A", 0, 3, "P3"), row("A", -1, 1, "P1"), row("A", 1, -1, "P2")]
    parts = intra_inter_scores(PREDICTIONS + outside, GOLD)
    assert [(part["num_predicted"], part["num_gold"], part["num_correct"]) for part in parts.values()] == [(2, 1, 1), (2, 2, 1)]

def test_frequent_relations_count_facts_and_break_ties_by_id():
    assert frequent_relations(TRAIN, top=2) == ["P1", "P2"]  # P2 and P3 tie at 2: the smaller id wins
    assert frequent_relations(TRAIN) == ["P1", "P2", "P3", "P4"]  # fewer than 10 relations: all
    many = [{"title": "M", "vertexSet": [mentions(0)] * 2, "labels": [{"h": 0, "t": 1, "r": f"R{i:02d}"} for i in range(12)]}]
    assert frequent_relations(many) == [f"R{i:02d}" for i in range(10)]


def test_frequent_and_long_tail_by_hand():
    parts = frequency_scores(PREDICTIONS, GOLD, TRAIN, top=2)
    assert parts["frequent_relations"] == ["P1", "P2"]
    frequent, tail = parts["frequent"], parts["long_tail"]
    # frequent {P1, P2}: 4 predictions (A 0-1, A 1-0, Z 0-1, A 5-0), gold A 0-1 P1 and A 1-2 P2, 1 correct
    assert (frequent["num_predicted"], frequent["num_gold"], frequent["num_correct"]) == (4, 2, 1)
    assert frequent["precision"] == pytest.approx(0.25) and frequent["recall"] == pytest.approx(0.5)
    assert frequent["f1"] == pytest.approx(f1(0.25, 0.5))
    # long tail {P3, P9}: predictions A 0-2 P3 (correct) and A 1-2 P9; gold A 0-2 P3
    assert (tail["num_predicted"], tail["num_gold"], tail["num_correct"]) == (2, 1, 1)
    assert tail["precision"] == pytest.approx(0.5) and tail["recall"] == 1.0


def test_per_relation_by_hand():
    table = per_relation_scores(PREDICTIONS, GOLD, {"P1": "one", "P3": "three"})
    assert list(table) == ["P1", "P3", "P2", "P9"]  # most gold first, then most predicted, then id
    assert table["P1"] == {"name": "one", "precision": 0.25, "recall": 1.0, "f1": pytest.approx(0.4),
                           "num_predicted": 4, "num_gold": 1, "num_correct": 1}
    assert table["P3"]["name"] == "three" and table["P3"]["f1"] == 1.0
    assert table["P2"]["name"] == "P2" and table["P2"]["num_predicted"] == 0 and table["P2"]["f1"] == 0.0
    assert table["P9"]["num_gold"] == 0 and table["P9"]["precision"] == 0.0


def test_breakdowns_partition_the_official_counts_on_real_documents(redocred_dev):
    """On real documents with noisy predictions: intra + inter and frequent + long tail add up to
    the official counts, and per-relation counts sum to them too."""
    gold_docs, train_docs = redocred_dev[400:], redocred_dev[:400]
    rng = random.Random(0)
    predictions = []
    for doc in gold_docs:
        for label in doc["labels"]:
            if rng.random() < 0.7:
                predictions.append(row(doc["title"], label["h"], label["t"], label["r"]))
        n = len(doc["vertexSet"])
        for _ in range(5):
            h, t = rng.sample(range(n), 2)
            predictions.append(row(doc["title"], h, t, rng.choice(["P17", "P131", "P27", "P1376"])))
    official = docred_scores(predictions, gold_docs, train_docs)
    details = breakdown("docred", predictions, gold_docs, train_docs)
    for first, second in (("intra", "inter"), ("frequent", "long_tail")):
        for key in ("num_predicted", "num_gold", "num_correct"):
            assert details[first][key] + details[second][key] == official[key]
    for key in ("num_predicted", "num_gold", "num_correct"):
        assert sum(s[key] for s in details["per_relation"].values()) == official[key]
    assert details["intra"]["num_gold"] > 0 and details["inter"]["num_gold"] > 0 and len(details["frequent_relations"]) == 10


# ------------------------------------------------------------------------------------ tables
def test_results_table_shows_intra_inter_only_when_present():
    bio = binary_scores(BIO_PREDICTIONS, BIO_GOLD)
    table = results_table({"dev": bio, "test": bio})
    assert table.splitlines()[0] == "| split | P | R | F1 | Intra F1 | Inter F1 |"
    assert table.splitlines()[2] == "| dev | 50.00 | 66.67 | 57.14 | 66.67 | 66.67 |"
    assert "Intra" not in results_table({"dev": docred_scores(PREDICTIONS, GOLD, TRAIN)})


def test_breakdown_and_per_relation_tables():
    details = breakdown("docred", PREDICTIONS, GOLD, TRAIN, {"P1": "one"})
    lines = breakdown_table({"test": details}).splitlines()
    assert lines[0] == "| split | subset | P | R | F1 | gold | predicted |"
    assert lines[2] == "| test | intra-sentence | 50.00 | 100.00 | 66.67 | 1 | 2 |"
    assert [line.split(" | ")[1] for line in lines[2:]] == ["intra-sentence", "inter-sentence", "frequent relations",
                                                            "long-tail relations"]
    assert breakdown_table({}) == ""
    relation_lines = per_relation_table(details["per_relation"]).splitlines()
    assert relation_lines[2] == "| P1 | one | 1 | 4 | 1 | 25.00 | 100.00 | 40.00 |"
    assert len(relation_lines) == 2 + 4
