"""Predict relations with a trained model (a run directory, a folder from scripts/export.py, or one on the Hugging Face Hub).

MODEL: a run directory, an exported model folder, or the Hub id ORG/NAME of one (scripts/export.py
--push-to-hub), downloaded into the Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache.

INPUT: a DocRED-format JSON list (plain or .gz; labels are ignored; FILE[a:b] takes a slice),
JSON lines, one document per line, DocRED-format or raw text {"text", "entities": [{"name"?,
"type"?, "mentions": [[char_start, char_end], ...]}], "title"?}, or a .txt file of plain text (one
document). Raw text without "entities" has them found by a spaCy pipeline (--spacy-model; the text
extra: pip install "docre[text]"), or grouped from its own "mentions". A CDR or GDA model also reads
its corpus's own files (EoG lines, as it trained on), over their candidate pairs. See docs/predict.md.

OUTPUT, by its extension:
  *.jsonl  one line per document: {"title", "triples": [{h_idx, h_name, t_idx, t_name, r, r_name,
           score, h_sents, t_sents}, ...]} (raw-text documents add "sent_spans", and "entities"
           where docre found or grouped them)
  *.json   the leaderboard list [{"title", "h_idx", "t_idx", "r", "evidence": []}]
  *.zip    a CodaLab submission: that list as result.json inside the zip
  *.html   one self-contained page to read the predictions: each document's text with its entity
           mentions highlighted, its relations (click one to mark its head, tail and evidence) and,
           for labelled documents, correct / wrong / missed marks against the gold facts

Examples:
  docre-predict runs/minilm_atgl-s66 docs.jsonl -o relations.jsonl
  docre-predict runs/minilm_atgl-s66 article.txt -o article.html
  docre-predict runs/minilm_atgl-s66 data/redocred/test_revised.json.gz -o result.zip
  docre-predict my-org/minilm-atgl docs.jsonl -o relations.html --device cpu
"""

import json
import os
from functools import partial
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli

DEFAULT_PIPELINE = "en_core_web_sm"  # = docre.data.entities.DEFAULT_PIPELINE, here so that --help imports nothing

OUTPUTS = (".jsonl", ".json", ".zip", ".html")
CHUNK = 256  # documents per call of the predictor: bounds the memory held by logits


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-predict", __doc__)
    parser.add_argument("model", metavar="MODEL", help="run directory, exported model folder, or Hugging Face Hub id ORG/NAME")
    parser.add_argument("input", metavar="INPUT",
                        help="documents: DocRED JSON list, JSON lines (DocRED or raw text) or a .txt file (plain text)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                        help="*.jsonl (triples), *.json (leaderboard), *.zip (CodaLab) or *.html (a page to read them)")
    parser.add_argument("--format", default="auto", choices=("auto", "docred", "text"), help="input format (default: by keys)")
    parser.add_argument("--spacy-model", default=DEFAULT_PIPELINE, metavar="NAME",
                        help=f"spaCy pipeline (package or folder) finding the entities of text that gives none "
                             f"(default {DEFAULT_PIPELINE})")
    parser.add_argument("--top-k", type=int, metavar="K", help="most relations per entity pair (default: the run's eval.top_k)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="documents per forward pass (default: the run's eval.batch_size)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--revision", help="of a Hub model: branch, tag or commit (default: main)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="JSON lines: set bad lines aside in OUTPUT.rejects.jsonl (with the reason) instead of stopping")
    parser.add_argument("--chunk-size", type=int, default=CHUNK, help=f"JSON lines: documents per chunk (default {CHUNK})")
    parser.add_argument("--overwrite", action="store_true", help="predict again into an output that is already complete")
    args = parser.parse_args()

    output = Path(args.output)
    if output.suffix not in OUTPUTS:
        raise DocreError(f"{output}: the output must end in {', '.join(OUTPUTS)}")
    for name, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value is not None and value < 1:
            raise DocreError(f"{name} must be at least 1, got {value}")

    from docre.config import load_config
    from docre.predict import resolve_model
    from docre.run_dir import model_kind
    from docre.utils import resolve_device

    resolve_device(args.device, "--device")  # no CUDA here fails before anything is read

    model_dir = resolve_model(args.model, args.revision)  # a Hub id: its folder in the Hugging Face cache
    model_kind(model_dir)  # a wrong model path fails before the input is read
    model_cfg = load_config(Path(model_dir) / "config.yaml")
    args.dataset = model_cfg.data.dataset  # the entity types found entities take
    from docre.losses import LOSSES, refuse_top_k

    loss_name = model_cfg.loss["name"]  # refused before any output is touched
    refuse_top_k(LOSSES[loss_name], args.top_k, "--top-k", f"{loss_name} of {args.model}")
    plain_text = Path(args.input).suffix.lower() == ".txt"
    streamed = output.suffix != ".html" and not plain_text and is_json_lines(args.input)
    if not streamed and (args.skip_bad or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        raise DocreError(f"{args.input}: --skip-bad and torchrun need JSON-lines input and a .jsonl, .json or .zip output")
    return _predict_stream(args, model_dir, output) if streamed else _predict_in_memory(args, model_dir, output)


def is_json_lines(spec: str) -> bool:
    """Whether the input is a JSON-lines file (no FILE[a:b] slice, first character "{"; a CDR or GDA
    file of EoG lines is read whole, as its corpus's reader reads it)."""
    path = Path(spec)
    if not path.is_file():
        return False  # a slice, or a missing file (read_documents says which)
    from docre.stream import open_text

    try:
        with open_text(path) as handle:
            head = handle.read(4096)
    except (OSError, EOFError) as error:  # a gzip cut or damaged within its first 4 KiB
        raise DocreError(f"{path}: cannot read ({error})") from None
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{"


def _predict_in_memory(args, model_dir, output: Path) -> int:
    """A JSON list (or a slice, or the .html page): read whole, predicted in chunks, written at the end."""
    import time

    from tqdm.auto import tqdm

    from docre.predict import Predictor, read_documents
    from docre.utils import hide_progress, plural, setup_logging

    docs = read_documents(args.input, args.format, args.spacy_model, args.dataset)  # bad input fails before the model loads
    setup_logging()
    predictor = Predictor.from_pretrained(model_dir, args.device, spacy_model=args.spacy_model)
    started = time.perf_counter()
    with tqdm(total=len(docs), desc="predict", unit="doc", disable=hide_progress()) as progress:
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
    print(f"{plural(len(docs), 'document')}, {plural(count, 'relation')} -> {output} "
          f"({seconds:.1f} s, {len(docs) / max(seconds, 1e-9):.1f} documents/s on {predictor.device})")
    return 0


def _predict_stream(args, model_dir, output: Path) -> int:
    """JSON lines: streamed, resumable and sharded over torchrun's processes (docre/stream.py)."""
    import time

    from tqdm.auto import tqdm

    from docre import distributed, stream
    from docre.predict import Predictor, prepare_documents
    from docre.run_dir import model_fingerprint
    from docre.utils import atomic_write_json, hide_progress, plural, resolve_device, setup_logging

    path = Path(args.input)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    status = path.stat()
    # The model is part of the command: its files' hashes (weights, decode parameters, ...) and the docre
    # version, so a retrained run under the same name never counts as done, nor continues another's output.
    settings = {"model": str(Path(model_dir).resolve()), "model_files": model_fingerprint(model_dir),
                "input": str(path.resolve()), "format": args.format, "output": output.suffix, "top_k": args.top_k,
                "chunk": args.chunk_size, "skip_bad": args.skip_bad, "spacy_model": args.spacy_model}
    record = {"settings": settings, "input_bytes": status.st_size, "input_mtime_ns": status.st_mtime_ns}
    done = _done_record(output) if output.exists() else None
    if args.overwrite:
        stream.remove_state(output, world)
    elif done == record:
        print(f"{output} is already complete (the same model and command over the same input); "
              "pass --overwrite to predict again")
        return 0
    elif done and (changed := stream.differences(done.get("settings", {}).get("model_files") or {}, settings["model_files"])):
        print(f"{output} was predicted by another model (changed since: {', '.join(changed)}); predicting again")
    setup_logging()
    rank, world, device = distributed.init_distributed(resolve_device(args.device, "--device"))
    predictor = Predictor.from_pretrained(model_dir, str(device), spacy_model=args.spacy_model)
    started = time.perf_counter()
    with tqdm(total=stream.count_lines(path) if rank == 0 else None, desc="predict", unit="doc",
              disable=hide_progress(rank == 0)) as bar:
        _, done = stream.run_shard(
            path, output, rank, world, settings, args.chunk_size,
            lambda docs: prepare_documents(docs, args.format, str(path), 0, args.spacy_model, args.dataset),
            partial(_records, output.suffix, predictor, args), args.skip_bad, bar)
    done = sum(distributed.gather(done))  # documents predicted by this command (not before an interruption)
    if rank == 0:
        (documents, relations), rejected = _finish(output, world)
        atomic_write_json(Path(f"{output}.done.json"), record)  # what "already complete" compares with
        seconds = time.perf_counter() - started
        print(f"{plural(documents, 'document')}, {plural(relations, 'relation')} -> {output}"
              + (f", {plural(rejected, 'bad line')} -> {output}.rejects.jsonl" if rejected else "")
              + f" ({seconds:.1f} s, {done / max(seconds, 1e-9):.1f} documents/s on {world} x {device})")
    distributed.barrier()
    distributed.shutdown()
    return 0


def _done_record(output: Path) -> dict | None:
    """OUTPUT.done.json: the settings and input (size, mtime) of the streamed run that completed OUTPUT."""
    try:
        return json.loads(Path(f"{output}.done.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _records(suffix: str, predictor, args, docs: list[dict]) -> list[bytes]:
    """One output record per document: its .jsonl line, or (.json/.zip) the JSON list of its rows."""
    if suffix == ".jsonl":
        lines = predictor.predict_records(docs, args.batch_size, args.top_k, prepared=True)
    else:
        rows_of: dict[str, list] = {doc["title"]: [] for doc in docs}
        for row in predictor.leaderboard_rows(docs, args.batch_size, args.top_k, prepared=True):
            rows_of[row["title"]].append(row)
        lines = [rows_of[doc["title"]] for doc in docs]
    return [(json.dumps(line, ensure_ascii=False) + "\n").encode() for line in lines]


def _finish(output: Path, world: int) -> tuple[tuple[int, int], int]:
    """Merge the shards into `output` in its format, the rejects into OUT.rejects.jsonl; remove
    the shards. Returns ((documents, relations), rejected lines)."""
    from docre import stream

    counts = [0, 0]

    def counted():
        for record in stream.merged_records(output, world):
            parsed = json.loads(record)
            counts[0] += 1
            counts[1] += len(parsed["triples"] if output.suffix == ".jsonl" else parsed)
            yield record

    if output.suffix == ".jsonl":
        stream.write_lines(output, counted())
    else:
        stream.write_joined_lists(output, counted(), "result.json" if output.suffix == ".zip" else None)
    rejected = stream.write_lines(Path(f"{output}.rejects.jsonl"), stream.merged_records(output, world, "rejects"))
    if not rejected:
        Path(f"{output}.rejects.jsonl").unlink()
    stream.remove_state(output, world)
    return (counts[0], counts[1]), rejected


def _write_jsonl(output: Path, predictor, docs: list[dict], args, progress) -> int:
    import json

    from docre.utils import atomic_open

    count = 0
    with atomic_open(output) as handle:  # streamed into a temporary file, renamed when complete
        for start in range(0, len(docs), CHUNK):
            chunk = docs[start : start + CHUNK]
            for record in predictor.predict_records(chunk, args.batch_size, args.top_k, prepared=True):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += len(record["triples"])
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
