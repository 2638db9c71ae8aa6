"""Threshold diagnostics of a finished run (ATGL paper Fig. 2/3), from its saved logits.

Reads RUN_DIR/{dev,test}_logits.safetensors, config.yaml and decode.json; prints false positives
and negatives under the loss's own decode, the TH offset (mean, std) and ordering-violation rate of
pairs with relations, and the NA pairs' margin and violation rate; writes RUN_DIR/diagnostics.json
and RUN_DIR/margins-<split>.png. Definitions: docs/losses.md.

Examples:
  docre-diagnose runs/minilm_atgl-s66
  docre-diagnose runs/minilm_atgl-s66 --split test --no-plots
"""

from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import run_cli


def format_report(report: dict) -> str:
    """Markdown table, one row per split."""
    def number(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "| split | FP | FN | scorer FP | scorer FN | offset mean | offset std | violation | NA margin | NA violation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in ("dev", "test"):
        if split not in report:
            continue
        r = report[split]
        lines.append(
            f"| {split} | {r['false_positives']} | {r['false_negatives']} | {r.get('scorer_false_positives', '–')} | "
            f"{r.get('scorer_false_negatives', '–')} | {number(r['offset_mean'])} | {number(r['offset_std'])} | "
            f"{number(r['violation_rate'])} | {number(r['na_margin_mean'], 2)} | {number(r['na_violation_rate'], 4)} |"
        )
    return "\n".join(lines)


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-diagnose", __doc__)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished training run directory")
    parser.add_argument("--split", choices=("dev", "test", "both"), default="both", help="which split's logits to diagnose")
    parser.add_argument("--no-plots", action="store_true", help="skip the margin plots")
    args = parser.parse_args()

    from docre.diagnostics import diagnose_run
    from docre.utils import atomic_write_json

    splits = ("dev", "test") if args.split == "both" else (args.split,)
    report = diagnose_run(args.run_dir, splits, plot_dir=None if args.no_plots else args.run_dir)
    atomic_write_json(args.run_dir / "diagnostics.json", report)
    kwargs = ", ".join(f"{k}={v}" for k, v in report["loss"].items() if k != "name")
    print(f"{args.run_dir.name}: {report['loss']['name']}({kwargs}), decode {report['decode'] or 'as built'}, "
          f"top_k {report['top_k']}")
    print(format_report(report))
    plots = [] if args.no_plots else [f"margins-{split}.png" for split in splits if split in report]  # splits with logits
    print(f"written: {', '.join([str(args.run_dir / 'diagnostics.json'), *plots])}")
    return 0


def run() -> None:
    """The `docre-diagnose` console command (and `python scripts/diagnose.py`)."""
    run_cli(main)
