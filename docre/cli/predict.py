"""Predict relations with a trained model (a run directory, a folder from scripts/export.py, or one on the Hugging Face Hub).

    python scripts/predict.py MODEL INPUT -o OUTPUT [--format auto|docred|text] [--top-k K]
                              [--batch-size N] [--device auto|cpu|cuda] [--revision REV]

MODEL: a run directory, an exported model folder, or the Hub id ORG/NAME of one (scripts/export.py
--push-to-hub), downloaded into the Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache.

INPUT: a DocRED-format JSON list (plain or .gz; labels are ignored; FILE[a:b] takes a slice) or
JSON lines, one document per line, DocRED-format or raw text {"text", "entities": [{"name"?,
"type"?, "mentions": [[char_start, char_end], ...]}], "title"?}. See docs/predict.md.

OUTPUT, by its extension:
  *.jsonl  one line per document: {"title", "triples": [{h_idx, h_name, t_idx, t_name, r, r_name,
           score, h_sents, t_sents}, ...]} (raw-text documents add "sent_spans")
  *.json   the leaderboard list [{"title", "h_idx", "t_idx", "r", "evidence": []}]
  *.zip    a CodaLab submission: that list as result.json inside the zip
  *.html   one self-contained page to read the predictions: each document's text with its entity
           mentions highlighted, its relations (click one to mark its head, tail and evidence) and,
           for labelled documents, correct / wrong / missed marks against the gold facts
"""

from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli

OUTPUTS = (".jsonl", ".json", ".zip", ".html")
CHUNK = 256  # documents per call of the predictor: bounds the memory held by logits


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-predict", __doc__)
    parser.add_argument("model", help="run directory, exported model folder, or Hugging Face Hub id ORG/NAME")
    parser.add_argument("input", help="documents: DocRED JSON list or JSON lines (DocRED or raw text)")
    parser.add_argument("-o", "--output", required=True,
                        help="*.jsonl (triples), *.json (leaderboard), *.zip (CodaLab) or *.html (a page to read them)")
    parser.add_argument("--format", default="auto", choices=("auto", "docred", "text"), help="input format (default: by keys)")
    parser.add_argument("--top-k", type=int, help="most relations per entity pair (default: the run's eval.top_k)")
    parser.add_argument("--batch-size", type=int, help="documents per forward pass (default: the run's eval.batch_size)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--revision", help="of a Hub model: branch, tag or commit (default: main)")
    args = parser.parse_args()

    output = Path(args.output)
    if output.suffix not in OUTPUTS:
        raise DocreError(f"{output}: the output must end in {', '.join(OUTPUTS)}")
    for name, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise DocreError(f"{name} must be at least 1, got {value}")

    import time

    from tqdm.auto import tqdm

    from docre.predict import Predictor, read_documents, resolve_model
    from docre.run_dir import model_kind
    from docre.utils import setup_logging

    model_dir = resolve_model(args.model, args.revision)  # a Hub id: its folder in the Hugging Face cache
    model_kind(model_dir)  # a wrong model path fails before the input is read
    docs = read_documents(args.input, args.format)  # bad input fails before the model is loaded
    setup_logging()
    predictor = Predictor.from_pretrained(model_dir, args.device)
    started = time.perf_counter()
    with tqdm(total=len(docs), desc="predict", unit="doc") as progress:
        if output.suffix == ".jsonl":
            count = _write_jsonl(output, predictor, docs, args, progress)
        elif output.suffix == ".html":
            count = _write_html(output, predictor, docs, args, progress)
        else:
            rows = []
            for start in range(0, len(docs), CHUNK):
                rows += predictor.leaderboard_rows(docs[start : start + CHUNK], args.batch_size, args.top_k, prepared=True)
                progress.update(len(docs[start : start + CHUNK]))
            _write_leaderboard(output, rows)
            count = len(rows)
    seconds = time.perf_counter() - started
    print(f"{len(docs)} documents, {count} relations -> {output} "
          f"({seconds:.1f} s, {len(docs) / max(seconds, 1e-9):.1f} documents/s on {predictor.device})")
    return 0


def _write_jsonl(output: Path, predictor, docs: list[dict], args, progress) -> int:
    import json

    from docre.utils import atomic_open

    count = 0
    with atomic_open(output) as handle:  # streamed into a temporary file, renamed when complete
        for start in range(0, len(docs), CHUNK):
            chunk = docs[start : start + CHUNK]
            for doc, triples in zip(chunk, predictor.predict(chunk, args.batch_size, args.top_k, prepared=True)):
                line = {"title": doc["title"], "triples": triples}
                if "sent_spans" in doc:
                    line["sent_spans"] = doc["sent_spans"]
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += len(triples)
            progress.update(len(chunk))
    return count


def _write_html(output: Path, predictor, docs: list[dict], args, progress) -> int:
    from docre import html_view
    from docre.utils import atomic_open

    count = 0
    with atomic_open(output) as handle:  # streamed like the .jsonl file: one document section at a time
        handle.write(html_view.page_start(docs, f"{args.model} on {args.input}"))
        for start in range(0, len(docs), CHUNK):
            chunk = docs[start : start + CHUNK]
            predicted = predictor.predict(chunk, args.batch_size, args.top_k, prepared=True)
            for index, (doc, triples) in enumerate(zip(chunk, predicted), start):
                handle.write(html_view.document_html(index, doc, triples, predictor.rel_info))
                count += len(triples)
            progress.update(len(chunk))
        handle.write(html_view.page_end())
    return count


def _write_leaderboard(output: Path, rows: list[dict]) -> None:
    import json
    import zipfile

    from docre.utils import atomic_open, atomic_write_json

    if output.suffix == ".json":
        atomic_write_json(output, rows, indent=None)
        return
    with atomic_open(output, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("result.json", json.dumps(rows, ensure_ascii=False))


def run() -> None:
    """The `docre-predict` console command (and `python scripts/predict.py`)."""
    run_cli(main)
