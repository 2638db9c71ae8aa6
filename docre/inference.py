"""Inference shared by training, evaluate.py, the Predictor and the scripts: logits of documents
(batched by length, independent of the batching but for TTM-RE's official layout) and their decoding
into leaderboard rows with the loss's own decision rule."""

import functools
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from docre.data import Split
from docre.data.collate import collate, encoded_tokens, stacked_facts
from docre.data.feature import Feature
from docre.models import pairs_attend_across_batch
from docre.models.output import EvidenceOutput, logits_of
from docre.utils import atomic_save_safetensors, autocast, hide_progress, release_free_memory

logger = logging.getLogger(__name__)

# Encoder tokens per evaluation batch on CPU by default: bounds the attention maps' memory there.
CPU_TOKEN_BUDGET = 4096


def predict_logits(model, features: list[Feature], num_classes: int, pad_id: int, batch_size: int,
                   device, dtype, desc: str = "predict", show: bool = True, max_tokens: int = 0) -> list[torch.Tensor]:
    """Logits [P_i, C] (float32, CPU) for each document, in the order given (see `predict`)."""
    return predict(model, features, num_classes, pad_id, batch_size, device, dtype, desc, show, max_tokens)[0]


@torch.no_grad()
def predict(model, features: list[Feature], num_classes: int, pad_id: int, batch_size: int, device, dtype,
            desc: str = "predict", show: bool = True, max_tokens: int = 0) -> tuple[list[torch.Tensor], list | None]:
    """Logits [P_i, C] (float32, CPU) for each document, in the order given, and, for a model that
    predicts evidence (DREEAM), each document's evidence distributions [P_i, S_i] (else None).

    Documents are batched by length (less padding), at most `batch_size` per batch and, with
    `max_tokens`, at most that many encoder tokens (a longer document alone; 0 = no cap, -1 = 4096
    on CPU and no cap on a GPU); the result does not depend on the batching, except for a model whose
    pairs attend to the other pairs of their batch (TTM-RE's official layout, docs/models.md): -1 gives
    it whole batches on every device, so that its predictions do not change with the device."""
    model.eval()
    on_cpu = torch.device(device).type == "cpu"
    coupled = pairs_attend_across_batch(model)
    if max_tokens < 0:
        max_tokens = CPU_TOKEN_BUDGET if on_cpu and not coupled else 0
    elif max_tokens and coupled:
        _warn_once(f"eval.max_batch_tokens={max_tokens} splits evaluation batches, and the pairs of a batch attend to "
                   "each other in this model (TTM-RE's official layout): its predictions depend on the cap "
                   "(eval.max_batch_tokens=-1 or 0 evaluates whole batches)")
    if on_cpu:
        release_free_memory()  # the training heap's free blocks (see release_free_memory)
    # documents without candidate pairs (fewer than two entities) have empty logits and skip the model
    order = sorted((i for i in range(len(features)) if len(features[i].hts)), key=lambda i: len(features[i].input_ids))
    logits: list = [torch.zeros(0, model.num_outputs) for _ in features]  # a loss's own label space may be wider than C
    evidence: list = [torch.zeros(0, _sentences(f)) for f in features]
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
                max_tokens <= 0 or encoded_tokens([features[j] for j in batches[-1] + [i]], model.window) <= max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    has_evidence = False
    # The bar (with the time left) counts tokens, not batches: batches run from the shortest documents
    # to the longest, so a count of batches would promise the end far too early.
    progress = tqdm(total=sum(len(features[i].input_ids) for i in order), desc=desc, unit="tok", unit_scale=True,
                    disable=hide_progress(show), leave=False)
    for indices in batches:
        batch = collate([features[i] for i in indices], num_classes, pad_id).to(device)
        with autocast(device, dtype):
            output = model(batch)
        for i, doc_logits in zip(indices, logits_of(output).float().cpu().split(batch.pairs_per_doc)):
            logits[i] = doc_logits.clone()  # its own storage: a view would keep (and pickle) the whole batch's
        if isinstance(output, EvidenceOutput):
            has_evidence = True
            for i, doc_evidence in zip(indices, output.evidence.float().cpu().split(batch.pairs_per_doc)):
                evidence[i] = doc_evidence[:, : _sentences(features[i])].clone()
        progress.update(sum(len(features[i].input_ids) for i in indices))
    progress.close()
    if on_cpu:
        release_free_memory()  # and evaluation's, before training goes on
    return logits, evidence if has_evidence else None


@functools.cache
def _warn_once(message: str) -> None:
    """Log `message` once per process: evaluation runs after every epoch."""
    logger.warning("%s", message)


def evidence_sentences(distribution: torch.Tensor, threshold: float) -> list[int]:
    """DREEAM's evidence rule: the sentences whose share of a pair's distribution [S] exceeds `threshold`."""
    return (distribution > threshold).nonzero().flatten().tolist()


def _sentences(feature: Feature) -> int:
    return len(feature.sent_pos) if feature.sent_pos is not None else 0


def decode_predictions(features: list[Feature], logits: list[torch.Tensor], loss_fn, top_k: int,
                       rel2id: dict[str, int], evidence: list[torch.Tensor] | None = None,
                       evidence_threshold: float = 0.2) -> list[dict]:
    """Leaderboard rows {"title", "h_idx", "t_idx", "r", "evidence"} from per-document logits, with
    the loss's own decision rule. With `evidence` (per document [P_i, S_i], from `predict`), a
    relation's evidence is every sentence of its pair's distribution above `evidence_threshold`
    (DREEAM's rule); without it, evidence lists are empty."""
    id2rel = {i: r for r, i in rel2id.items()}
    if not features:
        return []
    decoded = loss_fn.decode(torch.cat(logits), top_k)  # [P_total, C]
    rows = []
    for doc, (feature, doc_decoded) in enumerate(zip(features, decoded.split([len(f.hts) for f in features]))):
        pair_index, relation = doc_decoded[:, 1:].nonzero(as_tuple=True)
        for p, r in zip(pair_index.tolist(), relation.tolist()):
            head, tail = feature.hts[p]
            sentences = [] if evidence is None else evidence_sentences(evidence[doc][p], evidence_threshold)
            rows.append({"title": feature.title, "h_idx": int(head), "t_idx": int(tail), "r": id2rel[r + 1],
                         "evidence": sentences})
    return rows


def has_labels(split: Split) -> bool:
    return all("labels" in doc for doc in split.docs)


def save_logits(path: Path, features: list[Feature], logits: list[torch.Tensor]) -> None:
    """Logits (fp16) with the facts and pair counts needed to analyse them without the data."""
    atomic_save_safetensors({
        "logits": torch.cat(logits).half() if logits else torch.zeros(0),
        "pairs_per_doc": torch.tensor([len(f.hts) for f in features], dtype=torch.int32),
        "facts": torch.from_numpy(stacked_facts(features)),
    }, path)
