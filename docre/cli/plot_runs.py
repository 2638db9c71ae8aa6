"""Plots of a set of run directories: learning curves and the result table as bars (PNG).

curves.png: dev F1 and training loss per epoch, the mean over the seeds of each row with a ± std
band. bars.png: dev F1, test F1 and test Ign F1 per row (mean, ± std error bars) with the published
number as a black mark. Rows are grouped as in summarize_runs.py. Files go to --output-dir (default RUNS_DIR).

Examples:
  docre-plot-runs runs/redocred_mini
  docre-plot-runs runs/redocred_mini --table redocred_mini --output-dir plots/
"""

import argparse
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-plot-runs", __doc__)
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of run directories (e.g. one table's)")
    parser.add_argument("--table", metavar="NAME", help="table name or file whose published numbers to mark")
    parser.add_argument("--output-dir", metavar="DIR", help="folder for curves.png and bars.png (default: RUNS_DIR)")
    parser.add_argument("-o", dest="output_dir", help=argparse.SUPPRESS)  # its old spelling; -o is a file elsewhere
    args = parser.parse_args()

    from docre.plots import plot_bars, plot_curves, read_metrics
    from docre.summary import summarize_folder

    found, rows = summarize_folder(args.runs_dir, args.table)
    uncharted = [run.name for runs in found["groups"].values() for run in runs if not read_metrics(run)]
    if uncharted:  # e.g. sweeps and VaeDiff-DocRE runs finished before their metrics.jsonl was kept at the top
        print(f"no learning curve (no metrics.jsonl): {', '.join(uncharted)}")
    out = Path(args.output_dir or args.runs_dir)
    title = found["title"] or Path(args.runs_dir).resolve().name
    written = [plot_curves(found["groups"], out / "curves.png", title)]
    if any(row["n"] for row in rows):
        written.append(plot_bars(rows, out / "bars.png", title))
    print("written: " + ", ".join(map(str, written)))
    return 0


def run() -> None:
    """The `docre-plot-runs` console command (and `python scripts/plot_runs.py`)."""
    run_cli(main)
