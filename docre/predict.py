"""Use a trained model: relation triples for new documents, from a run directory or an exported folder.

    from docre import Predictor
    predictor = Predictor.from_pretrained("runs/minilm_atgl-s66")   # or a folder from scripts/export.py
    triples = predictor.predict(documents)                          # one list of triples per document
    triples = predictor.predict("Marie Curie was born in Warsaw.")  # plain text: entities found by spaCy

Documents are DocRED-format dicts (labels, if any, are ignored), raw text with mentions given as
character spans (`docre.data.text`), or plain text whose entities docre finds (`docre.data.entities`,
the `text` extra) or groups from the user's mentions. Prediction runs the very path `evaluate.py` scores:
`inference.predict_logits` for the logits and `inference.decode_predictions` (the loss's own decode,
with its tuned decode.json) for which relations are predicted; the score only annotates them.
"""

import json
from pathlib import Path

import torch

from docre.data.docred import parse_json_list, read_bytes, split_spec, validate_docred
from docre.data.entities import DEFAULT_PIPELINE, find_entities, mentions_to_entities
from docre.data.feature import featurize
from docre.data.text import check_text_document, text_to_docred
from docre.errors import DocreError
from docre.utils import logger, plural

FORMATS = ("auto", "docred", "text")
EOG_DATASETS = ("cdr", "gda")  # datasets whose files are EoG lines, which `read_documents` reads for their models


def decision_scores(loss_fn, logits: torch.Tensor) -> torch.Tensor:
    """[P, C] how far each relation logit lies past the loss's decision threshold; > 0 exactly where
    its decode predicts the relation before the top-k cap. The threshold is the TH logit for the
    threshold-class losses (ATL, ATGL, ...), or the loss's own (`decision_threshold`: 0 for balanced
    softmax, logit(theta) for BCE), as the diagnostics use it."""
    from docre.losses import relation_margins

    scores, thresholds = relation_margins(loss_fn, logits)  # [P, C] in the relation columns, [P]
    return scores - thresholds[:, None]


def read_documents(path: str | Path, fmt: str = "auto", spacy_model: str = DEFAULT_PIPELINE,
                   dataset: str = "docred") -> list[dict]:
    """Read an input file: a JSON list (DocRED format, plain or gzipped, `file[a:b]` takes a slice),
    JSON lines (one document per line, DocRED-format or raw text), or a .txt file (one document of
    plain text, titled by the file name), validated and converted to DocRED-format documents
    (`prepare_documents`; `spacy_model` and `dataset` as there); for a CDR or GDA model (`dataset`)
    also a file of that corpus's EoG lines, predicted over its own candidate pairs."""
    if fmt not in FORMATS:
        raise DocreError(f"--format {fmt!r}: not one of {', '.join(FORMATS)}")
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return prepare_documents([read_plain_text(path, fmt)], "text", str(path), 0, spacy_model, dataset)
    part = slice(None)
    if not path.exists():
        name, part = split_spec(str(path))
        path = Path(name)
    raw = read_bytes(path).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark (some Windows editors write one)
    if dataset in EOG_DATASETS and fmt != "text" and raw.lstrip()[:1] not in (b"[", b"{"):
        # a CDR or GDA model reads its own corpus's format too (EoG lines, docre/data/bio.py), with its candidate pairs
        from docre.data import READERS

        return READERS[dataset](path, part, None)
    docs = parse_json_list(path, raw) if raw.lstrip()[:1] == b"[" else _parse_json_lines(path, raw)
    first = part.indices(len(docs))[0]
    return prepare_documents(docs[part], fmt, str(path), first, spacy_model, dataset)


def read_plain_text(path: Path, fmt: str = "auto") -> dict:
    """A .txt file as one raw-text document {"title": the file name without .txt, "text": its text}
    (blank lines keep their place: they separate paragraphs, and so sentences)."""
    if fmt == "docred":
        raise DocreError(f"{path}: a .txt file is plain text, not --format docred")
    try:
        text = read_bytes(path).removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocreError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return {"title": path.stem, "text": text}


def _parse_json_lines(path: Path, raw: bytes) -> list:
    return [record for _, record in numbered_json_lines(path, raw)]


def numbered_json_lines(path: Path, raw: bytes) -> list[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSON-lines file's bytes.

    Raises:
        DocreError: "FILE: not UTF-8 text" or "FILE: line N: invalid JSON (...)".
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocreError(f"{path}: not UTF-8 text (byte {error.start})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except ValueError as error:
                raise DocreError(f"{path}: line {number}: invalid JSON ({error})") from None
    return records


def prepare_documents(documents: list, fmt: str = "auto", source: str = "input", first_index: int = 0,
                      spacy_model: str = DEFAULT_PIPELINE, dataset: str = "docred") -> list[dict]:
    """Validate documents and turn raw-text ones into DocRED format.

    Args:
        documents: dicts, each DocRED-format ({"title", "sents", "vertexSet", ...}) or raw text
            ({"text", "title"?} with "entities", or with "mentions" for docre to group, or with
            neither for docre to find them); with `fmt` "auto" each is recognised by its keys.
        source: name used in error messages (the file).
        first_index: index of the first document in `source`, for error messages.
        spacy_model: the spaCy pipeline that finds entities where a raw-text document gives none.
        dataset: the model's dataset, whose entity types the found entities take (`ENTITY_TYPES`).

    Raises:
        DocreError: one line naming the source, the document (index and title) and the field.
    """
    if not isinstance(documents, list):
        raise DocreError(f"{source}: documents must be a list, got {type(documents).__name__}")
    converted: list[dict | None] = []
    to_find = []  # (position, index, document, where) of raw text with neither entities nor mentions
    for offset, doc in enumerate(documents):
        index = first_index + offset
        kind = fmt
        if fmt == "auto":
            kind = ("docred" if isinstance(doc, dict) and "sents" in doc
                    else "text" if isinstance(doc, dict) and "text" in doc else None)
            if kind is None:
                raise DocreError(
                    f"{source}: document {index}: neither DocRED format (title, sents, vertexSet) nor raw text (text, entities?)"
                )
        if kind == "text" and isinstance(doc, dict) and "entities" not in doc:
            where = check_text_document(doc, index, source)[0]
            if "mentions" in doc:
                converted.append(text_to_docred(doc, index, source, mentions_to_entities(doc, where)))
            else:
                to_find.append((offset, index, doc, where))
                converted.append(None)
        elif kind == "text":
            converted.append(text_to_docred(doc, index, source))
        else:
            if isinstance(doc, dict) and "text" in doc and "sents" not in doc:
                raise DocreError(f"{source}: document {index}: raw text (a 'text' field) given with --format docred")
            converted.append(doc)
    if to_find:
        found = find_entities([doc["text"] for _, _, doc, _ in to_find], spacy_model, dataset, [w for *_, w in to_find])
        for (offset, index, doc, _), entities in zip(to_find, found):
            converted[offset] = text_to_docred(doc, index, source, entities)
    # every document, raw-text ones included, passes the DocRED checks (titles unique, spans in range); one whose
    # text has no entity found passes them with a stand-in entity: it is valid, it only has no relations
    found_at = {offset for offset, *_ in to_find}
    validate_docred([{**doc, "vertexSet": [[STAND_IN]]} if offset in found_at and not doc["vertexSet"] else doc
                     for offset, doc in enumerate(converted)],
                    source, None, first_index)
    return converted


STAND_IN = {"name": "", "sent_id": 0, "pos": [0, 1]}


def as_documents(documents) -> list:
    """`predict`'s input as a list of documents: one document (a dict, or a string of plain text) is a
    list of one; strings are plain-text documents {"text": ...}."""
    if isinstance(documents, (dict, str)):
        documents = [documents]
    if not isinstance(documents, list):
        return documents  # prepare_documents says what is wrong
    return [{"text": doc} if isinstance(doc, str) else doc for doc in documents]


class Predictor:
    """A trained model ready to predict: tokenizer, model, loss (for its decode) and relation names."""

    def __init__(self, cfg, tokenizer, model, loss_fn, rel2id: dict[str, int], rel_info: dict[str, str],
                 device: torch.device, dtype: torch.dtype, spacy_model: str = DEFAULT_PIPELINE):
        self.cfg, self.tokenizer, self.model, self.loss_fn = cfg, tokenizer, model, loss_fn
        self.rel2id, self.rel_info, self.device, self.dtype = rel2id, rel_info, device, dtype
        self.spacy_model = spacy_model  # finds the entities of plain text (docre.data.entities)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", revision: str | None = None,
                        trust_remote_code: bool = False, spacy_model: str = DEFAULT_PIPELINE) -> "Predictor":
        """Load a run directory (config.yaml, best.safetensors, rel2id.json), a folder written by
        scripts/export.py (which also carries the encoder's config and tokenizer, so it loads offline
        without the original backbone), or such a folder on the Hugging Face Hub ("ORG/NAME",
        `resolve_model`).

        Args:
            device: "auto" (CUDA if available), "cpu", "cuda", "cuda:N".
            revision: of a hub model: a branch, tag or commit (default: the main branch).
            trust_remote_code: let a hub model whose config.yaml sets model.trust_remote_code run the
                code in its encoder/ folder (else it is refused).
            spacy_model: the spaCy pipeline (a package name or a folder) that finds the entities of
                plain text, loaded when first needed (the `text` extra).
        """
        from docre.run_dir import load_trained, model_kind
        from docre.utils import inference_precision, resolve_device

        path = resolve_model(path, revision, trust_remote_code)
        model_kind(path)
        torch_device = resolve_device(device, "device")
        cfg, tokenizer, model, loss_fn, rel2id = load_trained(path, torch_device)
        return cls(cfg, tokenizer, model, loss_fn, rel2id, _rel_info(path, cfg, rel2id), torch_device,
                   inference_precision(cfg.train.precision, torch_device), spacy_model)

    def prepare(self, documents) -> list[dict]:
        """`prepare_documents` for this model: entities found by its spaCy pipeline, typed for its dataset."""
        return prepare_documents(as_documents(documents), spacy_model=self.spacy_model, dataset=self.cfg.data.dataset)

    def predict(self, documents: list[dict | str] | dict | str, batch_size: int | None = None, top_k: int | None = None,
                progress: bool = False, prepared: bool = False) -> list[list[dict]] | list[dict]:
        """Relation triples of each document (of one document, when given one dict or string rather than a list).

        Args:
            documents: DocRED-format or raw-text dicts (see `prepare_documents`), strings of plain text
                (entities found by the spaCy pipeline), or one of them.
            batch_size: documents per forward pass (default: the run's eval.batch_size).
            top_k: most relations per entity pair (default: the run's eval.top_k).
            progress: show a progress bar.
            prepared: the documents come from `read_documents` or `prepare_documents` (already
                checked and in DocRED format): skip checking them again.

        Returns:
            Per document, its triples, highest score first: {"h_idx", "h_name", "t_idx", "t_name",
            "r", "r_name", "score", "h_sents", "t_sents", "evidence"}: entity indices into the
            document's entities (vertexSet), their names, the relation id and name, the score (how
            far past the loss's decision boundary: the relation logit minus the TH logit for
            ATL/ATGL), the sentence ids of the head's and of the tail's mentions, and the ids of the
            sentences predicted as the triple's evidence ([] for a model that predicts none; DREEAM does).
        """
        if isinstance(documents, (dict, str)):
            return self.predict([documents], batch_size, top_k, progress, prepared)[0]
        docs = documents if prepared else self.prepare(documents)
        _warn_few_entities(docs)
        rows, scores, pair_rows = self._decode(docs, self._batch_size(batch_size), self._top_k(top_k), progress)
        scores = scores.numpy()
        rows_of: dict[str, list[dict]] = {doc["title"]: [] for doc in docs}  # titles are unique (validated)
        for row in rows:
            rows_of[row["title"]].append(row)
        results = []
        for doc, doc_pairs in zip(docs, pair_rows):  # sentence ids index doc["sents"] (and "sent_spans" for raw text)
            names = doc.get("entity_names") or [entity[0]["name"] for entity in doc["vertexSet"]]
            sents = [sorted({m["sent_id"] for m in entity}) for entity in doc["vertexSet"]]
            triples = [
                {"h_idx": h, "h_name": names[h], "t_idx": t, "t_name": names[t], "r": r, "r_name": self.rel_info.get(r, r),
                 "score": round(float(scores[doc_pairs[(h, t)], self.rel2id[r]]), 4), "h_sents": sents[h], "t_sents": sents[t],
                 "evidence": list(evidence)}
                for h, t, r, evidence in ((row["h_idx"], row["t_idx"], row["r"], row.get("evidence", []))
                                          for row in rows_of[doc["title"]])
            ]
            results.append(sorted(triples, key=lambda x: (-x["score"], x["h_idx"], x["t_idx"], x["r"])))
        return results

    def predict_records(self, documents: list[dict | str] | dict | str, batch_size: int | None = None,
                        top_k: int | None = None, progress: bool = False, prepared: bool = False) -> list[dict] | dict:
        """Per document the record a .jsonl output holds: {"title", "triples"} (`predict`'s triples)
        and, for raw text, "sent_spans": the [start, end) character span of each sentence in the
        text, which the triples' sentence ids (h_sents, t_sents, evidence) index; where docre made
        the entities (found them, or grouped the given mentions), also "entities" ({"name", "type",
        "mentions": [[start, end], ...]}, which h_idx and t_idx index) and "entities_by" (the spaCy
        pipeline, or "mentions"). Arguments as for `predict`; one document in, one record out."""
        if isinstance(documents, (dict, str)):
            return self.predict_records([documents], batch_size, top_k, progress, prepared)[0]
        docs = documents if prepared else self.prepare(documents)
        records = []
        for doc, triples in zip(docs, self.predict(docs, batch_size, top_k, progress, prepared=True)):
            extra = {key: doc[key] for key in ("sent_spans", "entities", "entities_by") if key in doc}  # raw text only
            records.append({"title": doc["title"], "triples": triples} | extra)
        return records

    def leaderboard_rows(self, documents: list[dict] | dict, batch_size: int | None = None, top_k: int | None = None,
                         progress: bool = False, prepared: bool = False) -> list[dict]:
        """The official result.json rows {"title", "h_idx", "t_idx", "r", "evidence": []}, exactly as
        evaluate.py scores them (arguments as for `predict`; one document or a list, rows either way)."""
        docs = as_documents(documents) if prepared else self.prepare(documents)
        return self._decode(docs, self._batch_size(batch_size), self._top_k(top_k), progress)[0]

    def _batch_size(self, batch_size: int | None) -> int:
        batch_size = self.cfg.eval.batch_size if batch_size is None else batch_size  # 0 is refused, not the default
        if batch_size < 1:
            raise DocreError(f"batch_size must be at least 1, got {batch_size}")
        return batch_size

    def _top_k(self, top_k: int | None) -> int:
        from docre.losses import refuse_top_k

        refuse_top_k(self.loss_fn, top_k, "top_k", self.cfg.loss["name"])
        top_k = self.cfg.eval.top_k if top_k is None else top_k
        if top_k < 1:
            raise DocreError(f"top_k must be at least 1, got {top_k}")
        return top_k

    def _decode(self, docs: list[dict], batch_size: int, top_k: int, progress: bool):
        """(leaderboard rows, decision scores [P_total, C], per document {(head, tail): its row in the scores})."""
        from docre.inference import decode_predictions, predict

        unlabelled = [{k: v for k, v in doc.items() if k != "labels"} for doc in docs]  # labels may name unknown relations
        features, report = featurize(unlabelled, self.tokenizer, self.rel2id, self.cfg.model.marker,
                                     self.cfg.model.max_seq_length)
        if report:
            logger.warning("%s", report)
        num_classes = len(self.rel2id)
        # per document [P_i, C]; a document with fewer than two entities gets [0, C] without the model
        logits, evidence = predict(self.model, features, num_classes, self.tokenizer.pad_token_id or 0, batch_size,
                                   self.device, self.dtype, desc="predict", show=progress,
                                   max_tokens=self.cfg.eval.max_batch_tokens)
        rows = decode_predictions(features, logits, self.loss_fn, top_k, self.rel2id, evidence,
                                  self.cfg.model.evidence_threshold)
        scores = decision_scores(self.loss_fn, torch.cat(logits)) if features else torch.zeros(0, num_classes)
        pair_rows, offset = [], 0
        for feature in features:
            pair_rows.append({(int(h), int(t)): offset + p for p, (h, t) in enumerate(feature.hts.tolist())})
            offset += len(feature.hts)
        return rows, scores, pair_rows


def _warn_few_entities(docs: list[dict]) -> None:
    """One line for the documents whose entities docre found but fewer than two: they have no relations."""
    few = [doc["title"] for doc in docs if "entities_by" in doc and len(doc["vertexSet"]) < 2]
    if few:
        shown = ", ".join(map(repr, few[:3])) + (", ..." if len(few) > 3 else "")
        logger.warning("%s with fewer than two entities found, so no relations: %s",
                       plural(len(few), "document"), shown)


def resolve_model(name: str | Path, revision: str | None = None, trust_remote_code: bool = False,
                  local_first: bool = False) -> Path:
    """The local folder of a model argument: an existing folder is itself; anything else shaped like a
    Hugging Face Hub id ("ORG/NAME") is that repository's snapshot in the Hugging Face cache
    (`snapshot_download`: HF_HOME / HF_HUB_CACHE decide where, HF_HUB_OFFLINE=1 reads only the
    cache), downloaded first when missing or outdated. Any other name is returned as given, for
    `run_dir.model_kind` to report as not found. With `local_first` (train.init_from, whose source is
    most often a run of this project) a name that is neither says first that no such local folder
    exists, and reads it as a Hub id only second.

    Raises:
        DocreError: a revision with a local folder, or the hub model cannot be had (one line: not
            cached while offline, no such repository, no such revision, no connection), or it would
            run its own code (model.trust_remote_code in its config.yaml) without `trust_remote_code`.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name)
    if path.exists():
        if revision:
            raise DocreError(f"{name}: a local folder; a revision ({revision}) applies only to a Hugging Face Hub id")
        return path
    if path.parent.is_dir() and path.parent != Path("."):  # "runs/nosuch" beside real runs: a missing folder, not a Hub id
        return path
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return path
    if str(name).count("/") != 1:  # docre's models on the Hub are ORG/NAME (scripts/export.py --push-to-hub)
        return path
    folder = _download(str(name), revision, local_first)
    # Whether someone else's code runs here is the caller's decision (as in transformers), never the
    # downloaded config's: an exported encoder/ folder of a custom-code encoder carries that code.
    if (folder / "config.yaml").is_file() and not trust_remote_code:
        from docre.config import load_config

        if load_config(folder / "config.yaml").model.trust_remote_code:
            raise DocreError(f"{name}: its config.yaml runs code from the model repository (model.trust_remote_code=true); if "
                             f"you trust {name}, load it with Predictor.from_pretrained({str(name)!r}, trust_remote_code=True)")
    return folder


def _download(repo_id: str, revision: str | None, local_first: bool = False) -> Path:
    """`repo_id`'s snapshot folder in the Hugging Face cache, each library error as one line (with
    `local_first`, led by the missing local folder: "runs/ttm" is likelier a mistyped path than a Hub id)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from docre import __version__
    from docre.errors import hub_error_line, hub_errors

    at = f"{repo_id}@{revision}" if revision else repo_id
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    local = f"no such local folder (from {Path.cwd()}); read as a Hugging Face Hub id, " if local_first else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, library_name="docre", library_version=__version__))
    except LocalEntryNotFoundError:  # offline (or the Hub unreachable) and not cached; also a partial snapshot
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub could not be reached"
        if local:
            raise DocreError(f"{at}: {local}not (completely) in the cache {constants.HF_HUB_CACHE} ({why}; `{fetch}` "
                             "fetches it where the Hub is reachable)") from None
        raise DocreError(f"{at}: not a local folder, and not (completely) in the Hugging Face cache {constants.HF_HUB_CACHE} "
                         f"({why}); fetch it where the Hub is reachable with `{fetch}` into the same cache "
                         "(HF_HOME / HF_HUB_CACHE), or name a local model folder") from None
    except RepositoryNotFoundError:  # also a private or gated repository without a token that may read it
        if local:
            raise DocreError(f"{repo_id}: {local}no model this token may read (private? log in with `hf auth login` "
                             "or set HF_TOKEN)") from None
        raise DocreError(f"{repo_id}: not a local folder, nor a model on the Hugging Face Hub that this token may "
                         "read (private? log in with `hf auth login` or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise DocreError(f"{repo_id}: the Hugging Face Hub model has no revision {revision!r}") from None
    except HfHubHTTPError as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DocreError(f"{at}: the Hugging Face Hub refused the download: {first_line}") from None
    except hub_errors() as error:  # the connection itself failed mid-way (a dropped connection: the HTTP client's error)
        raise DocreError(f"{at}: the download from the Hugging Face Hub failed: {hub_error_line(error)}") from None


def _rel_info(path: Path, cfg, rel2id: dict) -> dict[str, str]:
    """Relation id -> name: the exported folder's rel_info.json, else the run's data.rel_info file."""
    from docre.config import resolve_path
    from docre.data import load_rel_names

    for candidate in (path / "rel_info.json", resolve_path(cfg.data.rel_info) if cfg.data.rel_info else None):
        if candidate is not None and candidate.is_file():
            names = load_rel_names(str(candidate))
            return {r: names[r] for r in rel2id if r in names}
    logger.info("no rel_info.json found: relations are shown by id")
    return {}
