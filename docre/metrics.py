"""Scoring: official DocRED P/R/F1 and Ign F1 (the DocRED scorer as ATLOP's `evaluation.py` has it,
github.com/wzhouad/ATLOP), evidence P/R/F1 (the official scorer's Evi_F1, thunlp/DocRED
code/evaluation.py), CDR/GDA binary F1 (ATLOP's `train_bio.py`), and the breakdowns of
docs/metrics.md (intra/inter-sentence, frequent/long-tail, per relation).

Every function takes leaderboard rows {"title", "h_idx", "t_idx", "r"} and DocRED-format gold
documents, and counts a fact (title, head, tail, relation) once however often it is repeated.
Differences from the scripts of the ATLOP family, all deliberate: the training facts for Ign F1
come from the documents passed in (never a hard-coded file, never a cache keyed by file name),
empty predictions score 0 instead of crashing, and no epsilon is added to denominators (ATLOP's
bio scorer adds 1e-5, which moves F1 by less than 0.001 points on CDR).
"""

from collections import Counter
from collections.abc import Iterable

from docre.errors import DocreError

BINARY_DATASETS = ("cdr", "gda")  # one relation, scored on the listed candidate pairs
FREQUENT_RELATIONS = 10  # the "frequent" relations: the most frequent of the training file


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
        predictions: rows {"title", "h_idx", "t_idx", "r", "evidence"?}; repeated rows count once; rows for
            titles not in the gold documents count as wrong.
        gold_docs: DocRED-format documents with "labels".
        train_docs: the training documents; a correct prediction is "seen in training" when any
            (head mention name, tail mention name, relation) of it is a training fact. Ign F1
            removes those from the precision's numerator and denominator; recall is unchanged.

    Returns:
        precision, recall, f1, ign_precision, ign_f1 as fractions, and the counts behind them;
        evidence_precision, evidence_recall, evidence_f1 and their counts (`evidence_scores`).
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
    } | evidence_scores(predictions, gold_docs)


def _evidence_ids(evidence, where: str) -> set[int]:
    if type(evidence) not in (list, tuple) or not set(map(type, evidence)) <= {int}:
        raise DocreError(f"{where}: evidence: must be a list of sentence indices, got {evidence!r}")
    return set(evidence)


def evidence_scores(predictions: list[dict], gold_docs: list[dict]) -> dict[str, float | None]:
    """Evidence precision, recall and F1: the official DocRED scorer's Evi_F1 (thunlp/DocRED,
    code/evaluation.py), on facts counted once as everywhere in this module.

    * predicted evidence: the evidence sentences of every distinct predicted fact, correct or not
      (the official `pred_evi` sums over all submitted rows, not only the correct ones);
    * gold evidence: the evidence sentences of every distinct gold fact, found or not (`tot_evidences`);
    * correct evidence: for each correctly predicted fact only, |predicted ∩ gold| sentences; the
      evidence of a fact with a wrong relation, head or tail earns nothing.
    P = correct / predicted, R = correct / gold (0 when no gold fact has evidence), F1 their harmonic
    mean. The keys are always present; with no evidence predicted (every model but an evidence model:
    rows with "evidence": [] or none) all three are None, absent rather than 0, so that no table or
    file reports a model that predicts no evidence as one that predicts it all wrong.

    Where the official script counts lists instead of sets, this counts sets, as the relation scores
    here already do: rows repeating a fact count once with the union of their evidence (the
    official script counts every row), a gold fact labelled twice has the union of its labels'
    evidence (the official script keeps the last label's set but adds both lengths to the gold
    total), a sentence id repeated in one list counts once, and the evidence of rows for documents
    not in `gold_docs` counts as predicted (the official script skips those rows here, while
    counting them as wrong relations). On Re-DocRED dev/test none of these cases occur.
    """
    gold: dict[tuple, set[int]] = {}
    for doc in gold_docs:
        for label in doc.get("labels", []):
            fact = (doc["title"], label["h"], label["t"], label["r"])
            gold.setdefault(fact, set()).update(label.get("evidence", ()))
    predicted: dict[tuple, set[int]] = {}
    for i, row in enumerate(predictions):
        fact = (row["title"], row["h_idx"], row["t_idx"], row["r"])
        predicted.setdefault(fact, set()).update(_evidence_ids(row.get("evidence", []), f"prediction {i}"))
    num_predicted = sum(map(len, predicted.values()))
    num_gold = sum(map(len, gold.values()))
    num_correct = sum(len(evidence & gold[fact]) for fact, evidence in predicted.items() if fact in gold)
    scores = prf(num_correct, num_predicted, num_gold) if num_predicted else {"precision": None, "recall": None, "f1": None}
    return {"evidence_precision": scores["precision"], "evidence_recall": scores["recall"], "evidence_f1": scores["f1"],
            "num_evidence_predicted": num_predicted, "num_evidence_gold": num_gold, "num_evidence_correct": num_correct}


def score(dataset: str, predictions: list[dict], gold_docs: list[dict], train_docs: list[dict]) -> dict[str, float]:
    """The official scores of a dataset: binary F1 for CDR/GDA, the DocRED scorer otherwise."""
    if dataset in BINARY_DATASETS:
        return binary_scores(predictions, gold_docs)
    return docred_scores(predictions, gold_docs, train_docs)


def breakdown(dataset: str, predictions: list[dict], gold_docs: list[dict], train_docs: list[dict],
              rel_names: dict[str, str] | None = None) -> dict:
    """The finer scores of docs/metrics.md: intra/inter-sentence and per relation for every dataset,
    frequent/long-tail for the DocRED family (CDR/GDA have a single relation)."""
    if dataset in BINARY_DATASETS:
        result = {split: _prf_from(binary_scores(predictions, gold_docs), split) for split in ("intra", "inter")}
    else:
        result = intra_inter_scores(predictions, gold_docs) | frequency_scores(predictions, gold_docs, train_docs)
    return result | {"per_relation": per_relation_scores(predictions, gold_docs, rel_names)}


# ------------------------------------------------------------------------------------ helpers
def _facts(predictions: list[dict]) -> set[tuple[str, int, int, str]]:
    return {(row["title"], row["h_idx"], row["t_idx"], row["r"]) for row in predictions}


def prf(correct: int, predicted: int, gold: int) -> dict:
    """Precision, recall, F1 (fractions; 0 where undefined) and the counts behind them."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "num_predicted": predicted, "num_gold": gold, "num_correct": correct}


def _subset_prf(predicted: set, gold: set, keep) -> dict:
    """prf over the facts for which `keep(fact)` is true."""
    predicted = {f for f in predicted if keep(f)}
    gold = {f for f in gold if keep(f)}
    return prf(len(predicted & gold), len(predicted), len(gold))


def _prf_from(flat: dict, prefix: str) -> dict:
    return {key: flat[f"{prefix}_{key}"] for key in ("precision", "recall", "f1", "num_predicted", "num_gold", "num_correct")}


# ------------------------------------------------------------------------------------ CDR / GDA
def binary_scores(predictions: list[dict], gold_docs: list[dict]) -> dict[str, float]:
    """CDR/GDA: precision, recall and F1 of the positive class over the candidate pairs, also on
    intra-sentence (NON-CROSS) and inter-sentence (CROSS) pairs alone (keys intra_*, inter_*).

    Args:
        predictions: rows for the pairs predicted positive.
        gold_docs: documents from the CDR/GDA reader ("pairs", "pair_cross", "labels").

    A predicted pair that is not a listed candidate pair counts as a false positive overall and
    belongs to neither the intra nor the inter split (the model only scores listed pairs).
    """
    cross = {(doc["title"], h, t): c for doc in gold_docs for (h, t), c in zip(doc["pairs"], doc["pair_cross"])}
    gold, predicted = gold_facts(gold_docs), _facts(predictions)
    scores = prf(len(predicted & gold), len(predicted), len(gold))
    for name, is_cross in (("intra", False), ("inter", True)):
        part = _subset_prf(predicted, gold, lambda fact, is_cross=is_cross: cross.get(fact[:3]) is is_cross)
        scores |= {f"{name}_{key}": value for key, value in part.items()}
    return scores


# ------------------------------------------------------------------------------------ DocRED family
def entity_sentences(doc: dict) -> list[set[int]]:
    """Per entity, the sentences its mentions are in."""
    return [{mention["sent_id"] for mention in entity} for entity in doc["vertexSet"]]


def intra_inter_scores(predictions: list[dict], gold_docs: list[dict]) -> dict[str, dict]:
    """P/R/F1 on intra-sentence facts (some mention of the head and some mention of the tail share
    a sentence) and on inter-sentence facts (no such sentence). Rows naming an unknown document
    or entity belong to neither (they are wrong, and counted as such by docred_scores)."""
    sentences = {doc["title"]: entity_sentences(doc) for doc in gold_docs}

    def intra(fact) -> bool | None:
        title, head, tail, _ = fact
        entities = sentences.get(title)
        if entities is None or not (0 <= head < len(entities) and 0 <= tail < len(entities)):
            return None
        return bool(entities[head] & entities[tail])

    gold, predicted = gold_facts(gold_docs), _facts(predictions)
    return {"intra": _subset_prf(predicted, gold, lambda f: intra(f) is True),
            "inter": _subset_prf(predicted, gold, lambda f: intra(f) is False)}


def frequent_relations(train_docs: list[dict], top: int = FREQUENT_RELATIONS) -> list[str]:
    """The `top` relations with the most facts in the training documents (a repeated label counts
    once); ties go to the smaller relation id, so the choice is deterministic."""
    counts = Counter(fact[3] for fact in gold_facts(train_docs))
    return sorted(counts, key=lambda r: (-counts[r], r))[:top]


def frequency_scores(predictions: list[dict], gold_docs: list[dict], train_docs: list[dict],
                     top: int = FREQUENT_RELATIONS) -> dict:
    """P/R/F1 on the facts of the `top` most frequent training relations ("frequent") and on all
    other relations ("long_tail"), plus the list of frequent relations."""
    frequent = frequent_relations(train_docs, top)
    chosen = set(frequent)
    gold, predicted = gold_facts(gold_docs), _facts(predictions)
    return {"frequent": _subset_prf(predicted, gold, lambda f: f[3] in chosen),
            "long_tail": _subset_prf(predicted, gold, lambda f: f[3] not in chosen),
            "frequent_relations": frequent}


def per_relation_scores(predictions: list[dict], gold_docs: list[dict],
                        rel_names: dict[str, str] | None = None) -> dict[str, dict]:
    """P/R/F1 of each relation that is gold or predicted, most gold facts first, with its name
    from `rel_names` (rel_info.json; the id itself when absent)."""
    gold, predicted = gold_facts(gold_docs), _facts(predictions)
    gold_count, predicted_count = Counter(f[3] for f in gold), Counter(f[3] for f in predicted)
    correct_count = Counter(f[3] for f in gold & predicted)
    relations = sorted(set(gold_count) | set(predicted_count), key=lambda r: (-gold_count[r], -predicted_count[r], r))
    names = rel_names or {}
    return {r: {"name": names.get(r, r), **prf(correct_count[r], predicted_count[r], gold_count[r])} for r in relations}
