"""Official DocRED scoring (REFERENCE §3.4): P, R, F1 and Ign F1 over (title, head, tail, relation).

Differences from the scripts of the ATLOP family, all deliberate: the training facts for Ign F1
come from the documents passed in (never a hard-coded file, never a cache keyed by file name),
empty predictions score 0 instead of crashing, and no epsilon is added to denominators.
"""

from collections.abc import Iterable


def training_facts(train_docs: Iterable[dict]) -> set[tuple[str, str, str]]:
    """Every (head mention name, tail mention name, relation) of the training documents."""
    facts = set()
    for doc in train_docs:
        entities = doc["vertexSet"]
        for label in doc.get("labels", []):
            for head in entities[label["h"]]:
                for tail in entities[label["t"]]:
                    facts.add((head["name"], tail["name"], label["r"]))
    return facts


def gold_facts(gold_docs: Iterable[dict]) -> set[tuple[str, int, int, str]]:
    """The set of (title, head, tail, relation) facts; repeated labels count once."""
    return {(doc["title"], label["h"], label["t"], label["r"]) for doc in gold_docs for label in doc.get("labels", [])}


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def docred_scores(predictions: list[dict], gold_docs: list[dict], train_docs: list[dict]) -> dict[str, float]:
    """Score leaderboard rows against gold documents.

    Args:
        predictions: rows {"title", "h_idx", "t_idx", "r"}; repeated rows count once; rows for
            titles not in the gold documents count as wrong.
        gold_docs: DocRED-format documents with "labels".
        train_docs: the training documents; a correct prediction is "seen in training" when any
            (head mention name, tail mention name, relation) of it is a training fact. Ign F1
            removes those from the precision's numerator and denominator; recall is unchanged.

    Returns:
        precision, recall, f1, ign_precision, ign_f1 as fractions, and the counts behind them.
    """
    gold = gold_facts(gold_docs)
    predicted = {(row["title"], row["h_idx"], row["t_idx"], row["r"]) for row in predictions}
    correct = predicted & gold
    seen = training_facts(train_docs)
    entities = {doc["title"]: doc["vertexSet"] for doc in gold_docs}
    correct_seen = sum(
        1
        for title, head, tail, relation in correct
        if any((h["name"], t["name"], relation) in seen for h in entities[title][head] for t in entities[title][tail])
    )
    precision = len(correct) / len(predicted) if predicted else 0.0
    recall = len(correct) / len(gold) if gold else 0.0
    unseen_predicted = len(predicted) - correct_seen
    ign_precision = (len(correct) - correct_seen) / unseen_predicted if unseen_predicted else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "ign_precision": ign_precision,
        "ign_f1": _f1(ign_precision, recall),
        "num_predicted": len(predicted),
        "num_gold": len(gold),
        "num_correct": len(correct),
        "num_correct_in_train": correct_seen,
    }


def score(dataset: str, predictions: list[dict], gold_docs: list[dict], train_docs: list[dict]) -> dict[str, float]:
    """The official scores of a dataset (the DocRED scorer for the DocRED family)."""
    return docred_scores(predictions, gold_docs, train_docs)
