"""The mean ± std table of any set of run directories (the same table reproduce.py writes).

Runs are the folders under RUNS_DIR with a config.yaml; finished ones (results.json) are counted,
grouped by their name without the -s<seed> suffix (prefixed by their folder when RUNS_DIR holds
several). The published numbers come from --table, else from the grid.json that reproduce.py
leaves in a table's folder. Prints the markdown table; --output-dir DIR also writes DIR/table.md and
DIR/table.json.

Examples:
  docre-summarize runs/redocred_mini
  docre-summarize runs --table redocred_mini --output-dir tables/
"""

import argparse
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-summarize", __doc__)
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of run directories (e.g. one table's)")
    parser.add_argument("--table", metavar="NAME", help="table name or file whose published numbers to show")
    parser.add_argument("--output-dir", metavar="DIR", help="also write table.md and table.json here")
    parser.add_argument("-o", dest="output_dir", help=argparse.SUPPRESS)  # its old spelling; -o is a file elsewhere
    args = parser.parse_args()

    from docre.summary import markdown_table, summarize_folder, write_summary

    found, rows = summarize_folder(args.runs_dir, args.table)
    print(markdown_table(rows, found["title"], found["source"]))
    if args.output_dir:
        paths = write_summary(rows, Path(args.output_dir), found["title"], found["source"])
        print("written: " + ", ".join(map(str, paths)))
    return 0


def run() -> None:
    """The `docre-summarize` console command (and `python scripts/summarize_runs.py`)."""
    run_cli(main)
