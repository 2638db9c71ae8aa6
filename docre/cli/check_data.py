"""Validate a dataset file with the reader training uses and print its statistics.

FILE is DocRED-style JSON (`.json`, `.json.gz`, `file.json[a:b]` for a slice; --format docred is
then the default) or an EoG file (CDR/GDA: name the format). Without --rel2id the relations are
those of the file itself; with it, a relation the map lacks is an error naming the document. Bad
input: exit status 1 and one line naming the file, document and field. No tokenizer is needed.
Your own data: docs/your_data.md.

Examples:
  docre-check-data data/redocred/dev_revised.json
  docre-check-data my_train.json --format docred --rel2id data/docred/rel2id.json --json
  docre-check-data data/cdr/train_filter.data --format cdr
"""

import json
from collections import Counter

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli

FORMATS = ("docred", "cdr", "gda")


def statistics(docs: list[dict]) -> dict:
    """Counts over DocRED-format documents (CDR/GDA documents list their candidate `pairs`)."""
    facts = {(i, label["h"], label["t"], label["r"]) for i, doc in enumerate(docs) for label in doc.get("labels", [])}
    entities = sum(len(doc["vertexSet"]) for doc in docs)
    pairs = sum(len(doc["pairs"]) if "pairs" in doc else len(doc["vertexSet"]) * (len(doc["vertexSet"]) - 1) for doc in docs)
    relations = Counter(r for _, _, _, r in facts)
    return {
        "docs": len(docs),
        "entities": entities,
        "mentions": sum(len(entity) for doc in docs for entity in doc["vertexSet"]),
        "pairs": pairs,
        "positive_pairs": len({fact[:3] for fact in facts}),
        "facts": len(facts),
        "relations": len(relations),
        "sentences": sum(len(doc["sents"]) for doc in docs),
        "labelled": all("labels" in doc for doc in docs),
        "most_frequent": sorted(relations.items(), key=lambda item: (-item[1], item[0]))[:5],  # ties by name, not set order
    }


def infer_format(spec: str) -> str:
    """The format of a FILE given without --format: docred for .json / .json.gz (a [a:b] slice
    allowed). CDR and GDA files share the .data ending, so those must be named."""
    from docre.data.docred import split_spec

    if split_spec(spec)[0].endswith((".json", ".json.gz")):
        return "docred"
    raise DocreError(f"{spec}: cannot tell the format from the file name (DocRED files end in .json or .json.gz); "
                     f"pass --format {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-check-data", __doc__)
    parser.add_argument("file", metavar="FILE", help="the dataset file (FILE[a:b]: documents a to b-1)")
    parser.add_argument("--format", choices=FORMATS, help="the file's format: " + " | ".join(FORMATS)
                        + " (default: docred for a .json or .json.gz FILE)")
    parser.add_argument("--rel2id", help="relation map {\"Na\": 0, ...}: every label's relation must be in it")
    parser.add_argument("--json", action="store_true", help="print the statistics as one JSON line at the end")
    args = parser.parse_args()

    from docre.data import load_rel2id, read_split
    from docre.utils import plural, setup_logging

    setup_logging()
    data_format = args.format or infer_format(args.file)
    rel2id = load_rel2id(data_format, args.rel2id) if args.rel2id or data_format != "docred" else None
    path, _, docs = read_split(data_format, args.file, "", rel2id)
    stats = statistics(docs)
    print(f"{path}: valid {data_format} file")
    print(f"  {plural(stats['docs'], 'document')}, {plural(stats['sentences'], 'sentence')}, "
          f"{plural(stats['entities'], 'entity', 'entities')}, {plural(stats['mentions'], 'mention')}")
    print(f"  {plural(stats['pairs'], 'candidate pair')}, {plural(stats['positive_pairs'], 'positive pair')}, "
          f"{plural(stats['facts'], 'relation fact')} of {plural(stats['relations'], 'relation')}"
          + ("" if stats["labelled"] else " (some documents have no labels)"))
    if stats["most_frequent"]:
        print("  most frequent: " + ", ".join(f"{r} {n}" for r, n in stats["most_frequent"]))
    if args.json:
        print(json.dumps({k: v for k, v in stats.items() if k != "most_frequent"}))
    return 0


def run() -> None:
    """The `docre-check-data` console command (and `python scripts/check_data.py`)."""
    run_cli(main)
