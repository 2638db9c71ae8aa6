"""Content-hashed cache of featurised splits, stored as safetensors (plain arrays, no pickle).

The key hashes everything the features depend on: the file's bytes and the slice taken, the
reader, the tokenizer's full serialised state, the marker, `max_seq_length`, the relation map and
the source code of the featuriser and the reader. Any change gives a new key, so a stale entry is
never read; there is nothing to invalidate by hand. `FORMAT` names the layout of the stored
arrays and is part of the key too, so an entry written before a field was added is never read as
one that has it.
"""

import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch

from docre.data.feature import Feature
from docre.utils import atomic_save_safetensors

FORMAT = 2  # 2: sentence spans (sent_pos) and per-fact evidence sentences


def default_cache_dir(configured: str) -> Path | None:
    """'' -> $DOCRE_CACHE or ~/.cache/docre; 'none' -> no cache."""
    if configured.lower() == "none":
        return None
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("DOCRE_CACHE", Path.home() / ".cache" / "docre"))


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what the tokenizer does to text: vocabulary, normaliser, pre-tokeniser, model, post-processor.

    A fast tokenizer's truncation and padding settings are left out: they are per-call state that
    every call through transformers sets anew (featurising asks for neither), and a tokenizer.json
    may ship with some (MiniLM's: 128), so the first call changed the key.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        state = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:
        rules = json.loads(backend.to_str())
        rules.pop("truncation", None), rules.pop("padding", None)
        state = json.dumps(rules)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{state}".encode()).hexdigest()


def cache_key(path: Path, part: slice, reader, tokenizer_id: str, marker: str, max_seq_length: int, rel2id: dict) -> str:
    from docre.data import feature

    digest = hashlib.sha256()
    digest.update(path.read_bytes())
    settings = [FORMAT, part.start, part.stop, marker, max_seq_length, sorted(rel2id.items()), tokenizer_id]
    digest.update(json.dumps(settings).encode())
    for module in (feature, inspect.getmodule(reader)):
        digest.update(Path(inspect.getsourcefile(module)).read_bytes())
    return digest.hexdigest()[:32]


def save_features(path: Path, features: list[Feature], report: str) -> None:
    """Write features as concatenated int32 arrays plus per-document (per-fact) counts."""
    entity_pos = [m for f in features for m in f.entity_pos]
    labels = [f.labels if f.labels is not None else np.zeros((0, 2), np.int32) for f in features]
    # one evidence list per labels row, so that they split back by labels_per_doc
    evidence = [ids for f in features if f.labels is not None
                for ids in (f.evidence if f.evidence is not None else [[]] * len(f.labels))]
    sent_pos = [f.sent_pos if f.sent_pos is not None else np.zeros((0, 2), np.int32) for f in features]
    tensors = {
        "input_ids": _concat([f.input_ids for f in features], 1).view(-1),
        "tokens_per_doc": _counts([f.input_ids for f in features]),
        "mention_pos": torch.tensor([p for m in entity_pos for p in m], dtype=torch.int32),
        "mentions_per_entity": _counts(entity_pos),
        "entities_per_doc": _counts([f.entity_pos for f in features]),
        "hts": _concat([f.hts for f in features], 2),
        "pairs_per_doc": _counts([f.hts for f in features]),
        "labels": _concat(labels, 2),
        "labels_per_doc": torch.tensor([len(f.labels) if f.labels is not None else -1 for f in features], dtype=torch.int32),
        "sent_pos": _concat(sent_pos, 2),
        "sents_per_doc": _counts(sent_pos),
        "evidence": torch.tensor([i for ids in evidence for i in ids], dtype=torch.int32),
        "evidence_per_fact": _counts(evidence),
    }
    atomic_save_safetensors(tensors, path, metadata={"titles": json.dumps([f.title for f in features]), "report": report})


_ARRAYS = {"input_ids", "tokens_per_doc", "mention_pos", "mentions_per_entity", "entities_per_doc", "hts", "pairs_per_doc",
           "labels", "labels_per_doc", "sent_pos", "sents_per_doc", "evidence", "evidence_per_fact"}


def _counts(arrays) -> torch.Tensor:
    return torch.tensor([len(a) for a in arrays], dtype=torch.int32)


def _concat(arrays, width: int) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(arrays).reshape(-1, width).astype(np.int32))


def load_features(path: Path) -> tuple[list[Feature], str] | None:
    """Read features and report written by `save_features`; None if missing or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata()
            titles, report = json.loads(metadata["titles"]), metadata["report"]
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a mapping: no __iter__)
    except Exception:  # a corrupt or foreign entry is rebuilt, never trusted
        return None
    if not arrays.keys() >= _ARRAYS:  # an entry of another format
        return None

    def split(values, counts: np.ndarray) -> list:
        # plain slices: np.split costs ten times more for the ~13,000 mentions of 500 documents
        ends = np.cumsum(counts).tolist()
        return [values[start:end] for start, end in zip([0] + ends[:-1], ends)]

    mentions = split(arrays["mention_pos"].tolist(), arrays["mentions_per_entity"])  # lists of positions
    entity_groups = split(range(len(mentions)), arrays["entities_per_doc"])
    label_counts = arrays["labels_per_doc"]
    labels = split(arrays["labels"], np.maximum(label_counts, 0))
    evidence = split(arrays["evidence"].tolist(), arrays["evidence_per_fact"])  # one list per fact, all documents
    evidence_of = split(evidence, np.maximum(label_counts, 0))
    features = [
        Feature(
            title=title,
            input_ids=ids,
            entity_pos=[mentions[i] for i in group],
            hts=hts,
            labels=lab if n >= 0 else None,
            sent_pos=sent_pos,
            evidence=evi if n >= 0 else None,
        )
        for title, ids, group, hts, lab, n, sent_pos, evi in zip(
            titles,
            split(arrays["input_ids"], arrays["tokens_per_doc"]),
            entity_groups,
            split(arrays["hts"], arrays["pairs_per_doc"]),
            labels,
            label_counts,
            split(arrays["sent_pos"], arrays["sents_per_doc"]),
            evidence_of,
        )
    ]
    return features, report
