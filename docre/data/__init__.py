"""Datasets: one reader per file format, all producing DocRED-format documents.

`READERS` maps a dataset name to a function `(path, part, rel2id) -> list[dict]` that reads and
validates a file (or a slice of it) into DocRED-format documents. `load_split` then featurises
them (through the content-hashed cache) for the model, so every dataset shares marker
insertion, offsets and scoring.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from docre import distributed
from docre.data.bio import read_cdr, read_gda
from docre.data.cache import cache_key, default_cache_dir, load_features, save_features, tokenizer_fingerprint
from docre.data.docred import read_bytes, read_docred, split_spec
from docre.data.feature import Feature, featurize
from docre.errors import DocreError
from docre.utils import gc_paused, logger, plural

READERS = {
    "docred": read_docred,  # DocRED, Re-DocRED, DocGNRE, DWIE (DocRED-style JSON)
    "cdr": read_cdr,  # BC5CDR in the EoG format, chemical-induced disease
    "gda": read_gda,  # GDA in the EoG format, gene-disease association
}

# Datasets whose relation set is fixed by the format rather than given by a rel2id file.
FIXED_RELATIONS: dict[str, dict[str, int]] = {
    "cdr": {"Na": 0, "CID": 1},
    "gda": {"Na": 0, "GDA": 1},
}


@dataclass
class Split:
    """A loaded split: the documents (gold for scoring) and their features, in the same order."""

    name: str
    docs: list[dict]
    features: list[Feature]


def load_rel2id(dataset: str, rel2id_file: str, train_docs: list[dict] | None = None) -> dict[str, int]:
    """The relation map: fixed for CDR/GDA, from `rel2id_file` if given, else from the training
    documents (relations sorted by name after "Na": 0)."""
    if dataset in FIXED_RELATIONS:
        return dict(FIXED_RELATIONS[dataset])
    if rel2id_file:
        from docre.config import resolve_path

        path = resolve_path(rel2id_file)
        try:
            rel2id = json.loads(read_bytes(path))
        except (UnicodeDecodeError, ValueError) as error:
            raise DocreError(f"{path}: invalid relation map ({error})") from None
        if not isinstance(rel2id, dict) or not all(isinstance(v, int) for v in rel2id.values()):
            raise DocreError(f"{path}: a relation map must be a JSON object of relation -> class id")
        if sorted(rel2id.values()) != list(range(len(rel2id))) or 0 not in rel2id.values():
            raise DocreError(f"{path}: class ids must be 0..{len(rel2id) - 1} with 0 = NA")
        return rel2id
    if train_docs is None:
        raise DocreError("data.rel2id is empty and there are no training documents to take relations from")
    # A label "Na" is not a relation: kept in, it would take Na's id from class 0 (the threshold class).
    # Left out, the training file's reading against this map refuses it, naming the document.
    relations = sorted({label["r"] for doc in train_docs for label in doc.get("labels", [])} - {"Na"})
    return {"Na": 0, **{r: i + 1 for i, r in enumerate(relations)}}


def load_rel_names(rel_info_file: str) -> dict[str, str]:
    """Relation id -> readable name from a rel_info.json file (e.g. "P17" -> "country"), for the
    per-relation table; "" gives {} (ids are shown as they are)."""
    if not rel_info_file:
        return {}
    from docre.config import resolve_path

    path = resolve_path(rel_info_file)
    try:
        names = json.loads(read_bytes(path))
    except (UnicodeDecodeError, ValueError) as error:
        raise DocreError(f"{path}: invalid relation names ({error})") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise DocreError(f"{path}: relation names must be a JSON object of relation id -> name")
    return names


def read_split(dataset: str, spec: str, data_dir: str, rel2id: dict[str, int] | None,
               require_labels: bool = False) -> tuple[Path, slice, list[dict]]:
    """Read and validate the documents of a split spec ('file' or 'file[a:b]').

    The whole file is read and validated, then sliced, so error messages give a document's index
    in the file. `require_labels` (training splits) refuses documents without labels.
    """
    from docre.config import resolve_path

    name, part = split_spec(spec)
    path = resolve_path(name, data_dir)
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")  # a gzipped copy under the usual name (readers take both)
    with gc_paused():
        every = READERS[dataset](path, slice(None), rel2id)
    docs = every[part]
    if not docs:
        bounds = f"the slice [{_bound(part.start)}:{_bound(part.stop)}] " if every else ""
        raise DocreError(f"{path}: {bounds}holds no documents" + (f" (the file has {len(every)})" if every else ""))
    if require_labels:
        first = part.indices(len(every))[0]
        for index, doc in enumerate(docs, first):
            if "labels" not in doc:
                raise DocreError(f"{path}: document {index} ({doc['title']!r}): missing field 'labels' "
                                 "(training documents need labels)")
    return path, part, docs


def _bound(value: int | None) -> str:
    return "" if value is None else str(value)


def load_split(
    name: str,
    dataset: str,
    spec: str,
    data_dir: str,
    tokenizer,
    rel2id: dict[str, int],
    marker: str,
    max_seq_length: int,
    cache_dir: str = "",
    require_labels: bool = False,
) -> Split:
    """Read, validate and featurise one split, reusing cached features when nothing changed."""
    started = time.perf_counter()
    path, part, docs = read_split(dataset, spec, data_dir, rel2id, require_labels)
    cache = default_cache_dir(cache_dir)
    cached = None
    if cache is not None:
        key = cache_key(path, part, READERS[dataset], tokenizer_fingerprint(tokenizer), marker, max_seq_length, rel2id)
        entry = cache / f"{key}.safetensors"
        with gc_paused():
            cached = load_features(entry) if entry.exists() else None
    if cached is not None and len(cached[0]) == len(docs):
        features, report = cached
    else:
        with gc_paused():
            features, report = featurize(docs, tokenizer, rel2id, marker, max_seq_length,
                                         progress=f"featurise {name}" if distributed.rank() == 0 else "")
        if cache is not None:
            save_features(entry, features, report)
    if report:
        logger.warning("%s: %s", name, report)
    logger.info("%s: %s from %s (%.2fs)", name, plural(len(docs), "document"), spec, time.perf_counter() - started)
    return Split(name, docs, features)
