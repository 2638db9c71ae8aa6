"""Plot ATGL alpha sweeps: dev/test F1, P and R against alpha (log axis), mean ± std over the runs.

Each RUN_DIR is a finished `loss.alpha=auto` run (it holds alpha_sweep.json); several runs, e.g.
seeds, give the mean with a band of one standard deviation.

Examples:
  docre-plot-alpha runs/minilm_atgl-s66
  docre-plot-alpha runs/minilm_atgl-s66 runs/minilm_atgl-s67 -o alpha.png --title "MiniLM, Re-DocRED-mini"
"""

from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-plot-alpha", __doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a finished loss.alpha=auto run directory")
    parser.add_argument("-o", "--output", metavar="OUTPUT",
                        help="PNG file (default: RUN_DIR/alpha_sweep.png for one run, else alpha_sweep.png)")
    parser.add_argument("--title", default="", help="the plot's title (default: none)")
    args = parser.parse_args()

    from docre.plots import plot_alpha_sweep

    output = args.output or (Path(args.run_dirs[0]) / "alpha_sweep.png" if len(args.run_dirs) == 1 else "alpha_sweep.png")
    print(f"written: {plot_alpha_sweep([Path(d) for d in args.run_dirs], Path(output), args.title)}")
    return 0


def run() -> None:
    """The `docre-plot-alpha` console command (and `python scripts/plot_alpha.py`)."""
    run_cli(main)
