"""Inference-stage fusion (ISF) for models that predict evidence (DREEAM; Ma et al., EACL 2023, after
EIDER, Xie et al., ACL Findings 2022; official code github.com/YoumiMa/dreeam, `prepro.py`
`get_pseudo_features` and `evaluation.py` `merge_results`).

Every pair with predicted evidence gets a pseudo-document: its evidence sentences, plus the first
sentence of the head (or tail) when no evidence sentence mentions it, in document order; pairs with
the same sentence group share one. The model runs on the pseudo-documents (every pair of the
entities they mention), and each candidate relation — a pair's top-k classes by logit in either
pass, NA counting as one of the k as in the official code — is fused:

* decoded as a relation in both passes: kept;
* a candidate of both passes otherwise: score = original score + pseudo score;
* a candidate of one pass only: its score - 10;

and a fused candidate is kept when its score reaches a threshold chosen on dev to maximise F1 (the
kept-in-both relations counted). A score is the loss's margin past its decision boundary
(`predict.decision_scores`: for ATL/ATGL the logit minus the TH logit; the official code measures
against NA when NA is among the top k, as here, and otherwise against the k-th logit - 1); a
relation found in several pseudo-documents keeps its best score. A fused relation carries its pair's
evidence from the original pass (the official fused output carries none).
"""

from dataclasses import dataclass

import torch

from docre.data.feature import featurize
from docre.inference import evidence_sentences, predict
from docre.predict import decision_scores

PENALTY = 10.0  # subtracted from a candidate only one pass proposes (the official value)


@dataclass
class Candidate:
    score: float  # margin past the decision boundary
    predicted: bool  # the loss's decode predicts it (top-k cap included)


def sentence_groups(doc: dict, evidence: torch.Tensor, hts, threshold: float) -> list[list[int]]:
    """The distinct sentence groups of a document's pairs with predicted evidence (first seen first).

    Args:
        doc: the DocRED-format document.
        evidence: [P, S] the document's evidence distributions; hts: its [P, 2] candidate pairs.
    """
    groups: dict[tuple[int, ...], None] = {}
    for (head, tail), row in zip(hts.tolist(), evidence):
        sentences = set(evidence_sentences(row, threshold))
        if not sentences:
            continue
        for entity in (head, tail):
            mentioned = sorted(m["sent_id"] for m in doc["vertexSet"][entity])
            if not sentences & set(mentioned):
                sentences.add(mentioned[0])
        groups.setdefault(tuple(sorted(sentences)), None)
    return [list(group) for group in groups]


def pseudo_document(doc: dict, sentences: list[int], title: str) -> tuple[dict, list[int]]:
    """The document cut down to `sentences`: the entities with a mention there (those mentions only,
    renumbered), no labels; and the original index of each of its entities."""
    new_id = {s: i for i, s in enumerate(sentences)}
    vertex_set, original = [], []
    for index, entity in enumerate(doc["vertexSet"]):
        mentions = [{**m, "sent_id": new_id[m["sent_id"]]} for m in entity if m["sent_id"] in new_id]
        if mentions:
            vertex_set.append(mentions)
            original.append(index)
    return {"title": title, "sents": [doc["sents"][s] for s in sentences], "vertexSet": vertex_set}, original


def candidates(titles: list[str], hts_of: list, logits: list[torch.Tensor], loss_fn, top_k: int,
               id2rel: dict[int, str], entity_maps: list[list[int]] | None = None) -> dict[tuple, Candidate]:
    """{(title, head, tail, relation): Candidate} of each pair's top-k relations by logit; with
    `entity_maps`, entity indices are mapped back to the original document's and repeated
    candidates keep their best score."""
    found: dict[tuple, Candidate] = {}
    if not logits:
        return found
    stacked = torch.cat(logits)  # [P_total, C]
    margins = decision_scores(loss_fn, stacked)  # [P_total, C]
    decoded = loss_fn.decode(stacked, top_k) > 0  # [P_total, C]
    # the top k classes with NA among them (as the official get_score): NA itself is no candidate
    ranked = stacked.topk(min(top_k, stacked.size(1)), dim=1).indices  # [P_total, k]
    row = 0
    for doc, (title, hts) in enumerate(zip(titles, hts_of)):
        for head, tail in hts.tolist():
            if entity_maps is not None:
                head, tail = entity_maps[doc][head], entity_maps[doc][tail]
            for r in ranked[row].tolist():
                if r == 0:
                    continue
                key = (title, head, tail, id2rel[r])
                candidate = Candidate(float(margins[row, r]), bool(decoded[row, r]))
                if key not in found or candidate.score > found[key].score:
                    found[key] = candidate
            row += 1
    return found


def fuse(original: dict[tuple, Candidate], pseudo: dict[tuple, Candidate]) -> tuple[set, list[tuple[float, tuple]]]:
    """(relations kept outright, [(score, relation)] of the rest, best first)."""
    kept, scored = set(), []
    for key in original.keys() | pseudo.keys():
        if key in original and key in pseudo:
            if original[key].predicted and pseudo[key].predicted:
                kept.add(key)
                continue
            score = original[key].score + pseudo[key].score
        else:
            score = (original[key] if key in original else pseudo[key]).score - PENALTY
        scored.append((score, key))
    return kept, sorted(scored, key=lambda x: (-x[0], x[1]))


def best_threshold(kept: set, scored: list[tuple[float, tuple]], gold: set) -> float:
    """The score threshold with the best F1 on labelled data: the score of the last candidate kept
    (+inf when keeping none of them is best)."""
    correct, predicted = len(kept & gold), len(kept)
    best_f1 = 2 * correct / (predicted + len(gold)) if predicted + len(gold) else 0.0
    threshold = float("inf")
    for score, key in scored:
        correct += key in gold
        predicted += 1
        f1 = 2 * correct / (predicted + len(gold))
        if f1 > best_f1:
            best_f1, threshold = f1, score
    return threshold


def run_isf(model, loss_fn, docs: list[dict], features, logits, evidence, tokenizer, rel2id: dict, cfg, device, dtype,
            threshold: float | None = None) -> tuple[list[dict], float]:
    """Fused leaderboard rows for labelled or unlabelled documents, and the threshold used: the
    given one, or (threshold None, labelled `docs`) the one that maximises F1 on them.

    Args:
        features, logits, evidence: the original pass (`inference.predict`) over `docs`' features.
        cfg: the run's config (marker, max_seq_length, top_k, evidence threshold, eval batch size).
    """
    id2rel = {i: r for r, i in rel2id.items()}
    top_k, evidence_threshold = cfg.eval.top_k, cfg.model.evidence_threshold
    pseudo_docs, entity_maps, origins = [], [], []
    for doc, feature, doc_evidence in zip(docs, features, evidence):
        for sentences in sentence_groups(doc, doc_evidence, feature.hts, evidence_threshold):
            pseudo, original = pseudo_document(doc, sentences, f"{doc['title']}\x00{len(pseudo_docs)}")
            pseudo_docs.append(pseudo)
            entity_maps.append(original)
            origins.append(doc["title"])
    pseudo_features, _ = featurize(pseudo_docs, tokenizer, rel2id, cfg.model.marker, cfg.model.max_seq_length)
    pseudo_logits, _ = predict(model, pseudo_features, len(rel2id), tokenizer.pad_token_id or 0, cfg.eval.batch_size,
                               device, dtype, desc="isf", max_tokens=cfg.eval.max_batch_tokens)
    original = candidates([f.title for f in features], [f.hts for f in features], logits, loss_fn, top_k, id2rel)
    pseudo = candidates(origins, [f.hts for f in pseudo_features], pseudo_logits, loss_fn, top_k, id2rel, entity_maps)
    kept, scored = fuse(original, pseudo)
    if threshold is None:
        gold = {(doc["title"], lab["h"], lab["t"], lab["r"]) for doc in docs for lab in doc["labels"]}
        threshold = best_threshold(kept, scored, gold)
    chosen = kept | {key for score, key in scored if score >= threshold}
    pair_evidence = {}
    for feature, doc_evidence in zip(features, evidence):
        for (head, tail), row in zip(feature.hts.tolist(), doc_evidence):
            pair_evidence[(feature.title, head, tail)] = evidence_sentences(row, evidence_threshold)
    rows = [{"title": t, "h_idx": h, "t_idx": tl, "r": r, "evidence": pair_evidence.get((t, h, tl), [])}
            for t, h, tl, r in sorted(chosen)]
    return rows, threshold
