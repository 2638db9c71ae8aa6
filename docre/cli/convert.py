"""Convert annotated text (JSON lines, as annotation tools export it) into a DocRED-format file to train on.

INPUT: JSON lines (or a JSON list), one document each: {"text", "title"?, "entities": [{"mentions":
[[char_start, char_end], ...], "type"?, "name"?}, ...], "relations"?: [{"head", "tail", "type"}, ...]};
spans are character offsets, end excluded; "head" and "tail" index "entities"; "type" is the relation
id. The text is split into sentences and words as docre-predict splits raw text, and checked the same
way (spans inside the text, on whole words, no word in two entities); bad input: exit status 1 and
one line naming the file, the line and the entity or relation. With --rel2id every relation must be in
that map. See docs/your_data.md.

OUTPUT: a DocRED-format JSON list (.json, or gzipped .json.gz), written atomically, for train.py's
data.train_file / dev_file / test_file.

Examples:
  docre-convert annotations.jsonl -o data/mine/train.json
  docre-convert annotations.jsonl -o data/mine/train.json.gz --rel2id data/mine/rel2id.json
"""

import json
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-convert", __doc__)
    parser.add_argument("input", metavar="INPUT", help="annotated documents: JSON lines (or a JSON list) of text and entities")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="the DocRED-format file: *.json or *.json.gz")
    parser.add_argument("--rel2id", help="relation map {\"Na\": 0, ...}: every relation's type must be in it")
    args = parser.parse_args()

    output = Path(args.output)
    if not output.name.endswith((".json", ".json.gz")):
        raise DocreError(f"{output}: the output must end in .json or .json.gz")
    from docre.cli.check_data import statistics
    from docre.data import load_rel2id
    from docre.data.docred import validate_docred
    from docre.utils import plural

    rel2id = load_rel2id("docred", args.rel2id) if args.rel2id else None
    docs = convert_file(Path(args.input), rel2id)
    validate_docred(docs, args.input, rel2id)  # what train.py will check: titles unique, every span in range
    write_docs(output, docs)
    stats = statistics(docs)
    print(f"{plural(stats['docs'], 'document')}, {plural(stats['entities'], 'entity', 'entities')}, "
          f"{plural(stats['mentions'], 'mention')}, {plural(stats['facts'], 'relation fact')} of "
          f"{plural(stats['relations'], 'relation')} -> {output}")
    return 0


def convert_file(path: Path, rel2id: dict[str, int] | None) -> list[dict]:
    """The annotated documents of `path` in DocRED format (`annotated_to_docred`); errors in JSON
    lines name the line ("FILE: line N ('title'): ...")."""
    from docre.data.docred import parse_json_list, read_bytes
    from docre.data.text import annotated_to_docred
    from docre.predict import numbered_json_lines

    raw = read_bytes(path).removeprefix(b"\xef\xbb\xbf")
    if raw.lstrip()[:1] == b"[":
        return [annotated_to_docred(record, i, str(path), rel2id) for i, record in enumerate(parse_json_list(path, raw))]
    docs = []
    for number, record in numbered_json_lines(path, raw):
        try:
            docs.append(annotated_to_docred(record, len(docs), str(path), rel2id))
        except DocreError as error:  # "FILE: document N ('title'): ..." -> "FILE: line M ('title'): ..."
            raise DocreError(str(error).replace(f"{path}: document {len(docs)}", f"{path}: line {number}", 1)) from None
    return docs


def write_docs(output: Path, docs: list[dict]) -> None:
    """A JSON list, one document per line (readable, diff-able); gzipped for a .gz name."""
    import gzip

    from docre.utils import atomic_open

    text = "[\n" + ",\n".join(json.dumps(doc, ensure_ascii=False) for doc in docs) + "\n]\n"
    with atomic_open(output, "wb") as handle:
        handle.write(gzip.compress(text.encode(), mtime=0) if output.name.endswith(".gz") else text.encode())


def run() -> None:
    """The `docre-convert` console command (and `python scripts/convert.py`)."""
    run_cli(main)
