"""Train one config once per loss and seed, then tabulate scores, errors and threshold diagnostics.

Every run is one training process (the grid runner of scripts/reproduce.py, docre.grid) with the same
data, model and seed; only the loss differs. Runs land in DIR/<config>-<loss>-s<seed>/ (default DIR:
runs/compare-<config>): finished runs (results.json present) are skipped, interrupted ones resumed,
runs of another config refused, so the command can be re-run after a crash or with more losses.
Then it writes DIR/comparison.md and DIR/comparison.json (P, R, F1, Ign F1, FP, FN, TH offset std,
violation rate, seconds per step; mean ± std over seeds when there are several) and the plots under
DIR/plots/.

--runs DIR tabulates finished runs instead of training any: every run directory under DIR (e.g. the
folder of a reproduce.py grid such as atgl_table3_redocred_mini), one row per run name without its
-s<seed> suffix, in the grid's row order when DIR holds reproduce.py's grid.json; unfinished runs are
named and left out, failed ones (failed.json) listed as failed in the table. The table and plots go
to --output-dir (default: DIR).

Loss keywords: a loss named on the command line does not inherit the config file's loss keywords
(`load_config`), so each loss runs with its own defaults, except the loss the config itself names,
which keeps the file's keywords (ATGL keeps alpha from an ATGL config; elsewhere its default 16.5).
The table spells out every run's keywords, defaults included. `--losses all` runs every loss.

Examples:
  docre-compare-losses configs/redocred_mini/minilm_atgl.yaml --losses atl,atgl,afl
  docre-compare-losses configs/redocred_mini/minilm_atgl.yaml --losses all --seeds 66,67,68 train.epochs=2
  docre-compare-losses configs/redocred_mini/minilm_atgl.yaml --losses all --jobs 2   # two runs at a time
  docre-compare-losses --runs runs/atgl_table3_redocred_mini
"""

import inspect
import math
import statistics
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, did_you_mean, run_cli

# Set per run by this script; an override of these would make the runs collide or differ.
RESERVED = ("loss.", "seed=", "run_name=", "output_dir=", "train.resume=", "train.overwrite=")


def loss_signature(loss: dict) -> tuple[str, dict]:
    """(name(k=v, ...), kwargs) with the constructor's defaults filled in."""
    from docre.losses import FROM_TRAINING, LOSSES

    bound = inspect.signature(LOSSES[loss["name"]]).bind(**{k: v for k, v in loss.items() if k != "name"})
    bound.apply_defaults()
    kwargs = dict(bound.arguments)
    statistic = FROM_TRAINING.get(loss["name"], (None,))[0]
    if kwargs.get(statistic, "") is None:  # computed from the training split at setup (loss_statistics.json)
        kwargs[statistic] = "training"
    if kwargs.get("th_offset") == 0.0:  # the official decode: a decode setting, not a loss hyperparameter
        del kwargs["th_offset"]
    return f"{loss['name']}({', '.join(f'{k}={v}' for k, v in kwargs.items())})", kwargs


def parse_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise DocreError(f"--{what}: empty list")
    if len(set(items)) != len(items):
        raise DocreError(f"--{what}: {text!r} names an item twice")
    return items


def table_row(group: str, run_dir: Path, results: dict, split: str, plot_dir: Path) -> dict:
    """One table row of run `run_dir` in row `group`: the official scores and counts of `split`, and
    the threshold diagnostics computed from the run's saved logits."""
    from docre.config import load_config
    from docre.diagnostics import diagnose_run
    from docre.sweep import is_auto

    scores = results.get(split)
    if not scores or "num_predicted" not in scores:
        raise DocreError(f"{run_dir}: no labelled {split} scores in results.json (is the {split} split unlabelled?)")
    cfg = load_config(run_dir / "config.yaml")
    loss = dict(cfg.loss)
    if is_auto(cfg) and results.get("alpha") is not None:
        loss["alpha"] = results["alpha"]  # an alpha sweep (loss.alpha=auto): the alpha it chose on dev, as its other seeds
    label, kwargs = loss_signature(loss)
    row = {
        "group": group, "loss": cfg.loss["name"], "label": label, "kwargs": kwargs,
        "decode": results.get("decode", {}),
        "seed": cfg.seed, "run_dir": str(run_dir),
        **{k: scores[k] for k in ("precision", "recall", "f1", "ign_f1", "num_predicted", "num_gold", "num_correct")},
        "false_positives": scores["num_predicted"] - scores["num_correct"],
        "false_negatives": scores["num_gold"] - scores["num_correct"],
        "seconds_per_step": results.get("seconds_per_step"),
    }
    try:
        diagnostics = diagnose_run(run_dir, (split,), plot_dir=plot_dir / run_dir.name)[split]
    except DocreError as error:  # e.g. trained with eval.save_logits=false: scores only
        print(f"{run_dir.name}: no threshold diagnostics ({error})", flush=True)
        diagnostics = {}
    for key in ("offset_mean", "offset_std", "violation_rate", "na_margin_mean", "na_violation_rate"):
        row[key] = diagnostics.get(key)
    # the saved logits are fp16: counts from them may differ from the scorer's by a borderline relation
    row["logits_false_positives"] = diagnostics.get("false_positives")
    row["logits_false_negatives"] = diagnostics.get("false_negatives")
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and (sample) std over seeds, per group (run name without its seed), in the order given."""
    keys = ("precision", "recall", "f1", "ign_f1", "false_positives", "false_negatives", "offset_std",
            "violation_rate", "seconds_per_step")
    summary = []
    for name in dict.fromkeys(row["group"] for row in rows):
        group = [row for row in rows if row["group"] == name]
        # seeds trained with different keywords (e.g. an alpha sweep's choices): every one named, as docre-summarize does
        entry = {"group": name, "label": " / ".join(dict.fromkeys(row["label"] for row in group)), "loss": group[0]["loss"],
                 "seeds": [row["seed"] for row in group]}
        for key in keys:
            values = [row[key] for row in group if row[key] is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None  # one seed: no spread to show
        summary.append(entry)
    return summary


def _cell(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return {"pct": f"{100 * value:.2f}", "int": f"{value:.0f}", "ratio": f"{value:.3f}", "sec": f"{value:.2f}"}[kind]


COLUMNS = (("precision", "P", "pct"), ("recall", "R", "pct"), ("f1", "F1", "pct"), ("ign_f1", "Ign F1", "pct"),
           ("false_positives", "FP", "int"), ("false_negatives", "FN", "int"), ("offset_std", "offset std", "ratio"),
           ("violation_rate", "violation rate", "ratio"), ("seconds_per_step", "s/step", "sec"))


def kendall_tau(xs: list[float], ys: list[float]) -> tuple[float, int, int]:
    """Kendall's tau-a of two orderings of the same items: (C - D) / (n(n-1)/2), with C and D the
    concordant and discordant pairs; a pair tied in either counts as neither. Returns (tau, C, D)."""
    concordant = discordant = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            sign = (xs[i] - xs[j]) * (ys[i] - ys[j])
            concordant += sign > 0
            discordant += sign < 0
    pairs = len(xs) * (len(xs) - 1) // 2
    return ((concordant - discordant) / pairs if pairs else math.nan), concordant, discordant


def paper_section(summary: list[dict], published: dict[str, dict]) -> list[str]:
    """Markdown lines: each row's mean test F1 / Ign F1 beside the published ones, both rankings and
    Kendall's tau between them, over the rows with a published test F1; [] when none has one."""
    from docre.utils import plural

    known = [entry for entry in summary if isinstance(published.get(entry["group"], {}).get("test_f1"), (int, float))]
    if not known:
        return []
    paper = [published[entry["group"]] for entry in known]

    def ranks(values: list[float]) -> list[int]:  # 1 = highest
        return [1 + sum(other > value for other in values) for value in values]

    ours_rank, paper_rank = ranks([e["f1"] for e in known]), ranks([p["test_f1"] for p in paper])
    lines = ["", "Beside the published numbers (test, %; rank 1 = highest F1 among these rows):", "",
             "| run | F1 | paper F1 | Ign F1 | paper Ign F1 | rank | paper rank |", "|---|---|---|---|---|---|---|"]
    for entry, numbers, ours, theirs in zip(known, paper, ours_rank, paper_rank):
        ign = numbers.get("test_ign_f1")
        lines.append(f"| {entry['group']} | {_cell(entry['f1'], 'pct')} | {numbers['test_f1']:.2f} | "
                     f"{_cell(entry['ign_f1'], 'pct')} | {'–' if ign is None else f'{ign:.2f}'} | {ours} | {theirs} |")
    if len(known) < 2:
        return lines
    tau, concordant, discordant = kendall_tau([e["f1"] for e in known], [p["test_f1"] for p in paper])
    lines += ["", f"Ordering by test F1: Kendall's tau {tau:.2f} over {len(known)} rows ({plural(concordant, 'pair')} "
                  f"ordered alike, {discordant} reversed, the rest tied)."]
    return lines


def markdown(rows: list[dict], summary: list[dict], split: str, command: str, published: dict | None = None,
             failed: dict[str, str] | None = None) -> str:
    from docre.summary import failed_line

    lines = [f"# Loss comparison ({split} split)", "", f"    {command}", "",
             "| run | loss (keywords as trained) | seed | decode (tuned on dev) | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 4) + "|"]
    for row in rows:
        decode = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["decode"].items()) or "–"
        cells = [_cell(row[key], kind) for key, _, kind in COLUMNS]
        lines.append(f"| {row['group']} | {row['label']} | {row['seed']} | {decode} | " + " | ".join(cells) + " |")
    if any(len(entry["seeds"]) > 1 for entry in summary):
        lines += ["", "Mean ± std over seeds:", "", "| run | loss | seeds | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 3) + "|"]
        for entry in summary:
            cells = [_cell(entry[key], kind) + ("" if entry[key + "_std"] is None else f" ± {_cell(entry[key + '_std'], kind)}")
                     for key, _, kind in COLUMNS]
            lines.append(f"| {entry['group']} | {entry['label']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "P, R, F1, Ign F1 in %; FP = predicted - correct and FN = gold - correct facts (official scorer); "
              "offset std and violation rate over pairs with gold relations (docs/losses.md). "
              "Loss keywords are each run's constructor arguments, defaults included "
              "(=training: computed from the training split, the run's loss_statistics.json)."]
    mismatched = [Path(row["run_dir"]).name for row in rows if row["logits_false_positives"] is not None
                  and (row["logits_false_positives"], row["logits_false_negatives"])
                  != (row["false_positives"], row["false_negatives"])]
    if mismatched:
        lines.append(f"FP/FN recomputed from the saved fp16 logits differ slightly for: {', '.join(mismatched)} "
                     "(relations within fp16 rounding of the threshold).")
    if failed:  # their rows are missing or have fewer seeds, the ranking below included
        lines.append(failed_line(failed))
    if split == "test":
        lines += paper_section(summary, published or {})
    return "\n".join(lines) + "\n"


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-compare-losses", __doc__)
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="the config file every run trains with")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    parser.add_argument("--losses", help="comma-separated names from docre.losses.LOSSES, or 'all'")
    parser.add_argument("--seeds", default="66", help="comma-separated seeds (default: 66)")
    parser.add_argument("--runs", type=Path, metavar="DIR", help="tabulate the finished runs under DIR; train nothing")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="where runs, tables and plots go (default: runs/compare-<config>, or the --runs DIR)")
    parser.add_argument("--split", choices=("test", "dev"), default="test", help="split of the table (default: test)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs trained at once, each with 1/N of the CPU threads or GPUs of its own (default: 1)")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options

    from docre.diagnostics import plot_comparison
    from docre.summary import read_run_results
    from docre.utils import atomic_write_json, atomic_write_text

    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.runs is not None:
        if args.config or args.overrides or args.losses:
            raise DocreError("--runs DIR tabulates finished runs: give no CONFIG, key=value or --losses with it")
        (runs, published, failed), failure = finished_runs(args.runs), None
        output_dir = args.output_dir or args.runs
        command = f"python scripts/compare_losses.py --runs {args.runs} --split {args.split}"
    else:
        if not args.config or not args.losses:
            raise DocreError("give a CONFIG and --losses (to train and compare), or --runs DIR (to tabulate finished runs)")
        (runs, failed, failure), published = train_runs(args), {}
        output_dir = args.output_dir or Path("runs") / f"compare-{Path(args.config).stem}"
        command = " ".join(["python scripts/compare_losses.py", args.config, "--losses", args.losses,
                            "--seeds", args.seeds, "--split", args.split, *args.overrides])
    rows = [table_row(group, run_dir, read_run_results(run_dir), args.split, output_dir / "plots") for group, run_dir in runs]
    summary = summarise(rows)
    atomic_write_json(output_dir / "comparison.json", {"config": args.config, "overrides": args.overrides, "split": args.split,
                                                        "command": command, "runs": rows, "summary": summary,
                                                        "failed": failed})
    table = markdown(rows, summary, args.split, command, published, failed)
    atomic_write_text(output_dir / "comparison.md", table)
    title = f"{args.runs.name}, {args.split}" if args.runs else f"{Path(args.config).stem}, {args.split}, seeds {args.seeds}"
    plot_comparison([{"label": e["group"], "f1": e["f1"], "false_positives": e["false_positives"],
                      "false_negatives": e["false_negatives"], "f1_std": e["f1_std"], "fp_std": e["false_positives_std"],
                      "fn_std": e["false_negatives_std"]} for e in summary],
                    output_dir / "plots" / "comparison.png",
                    title)
    print()
    print(table)
    print(f"written: {output_dir / 'comparison.md'}, comparison.json, plots/")
    if failure is not None:  # the finished runs are tabulated above; the exit status still says some failed
        raise failure
    return 0


def train_runs(args) -> tuple[list[tuple[str, Path]], dict[str, str], DocreError | None]:
    """Train (or skip, or resume) one run per loss and seed of `args`. Returns (row name, run directory)
    of each finished run, the failed ones (run directory -> error), and the error to raise once the
    finished ones are tabulated (None when none failed); raises it at once when every run failed."""
    from docre.grid import run_grid
    from docre.losses import LOSSES
    from docre.run_dir import ACTIONS, read_failure
    from docre.tables import Row, Table, plan_runs
    from docre.utils import plural

    losses = list(LOSSES) if args.losses == "all" else parse_list(args.losses, "losses")
    unknown = [name for name in losses if name not in LOSSES]
    if unknown:
        raise DocreError(f"--losses: unknown loss {unknown[0]!r}{did_you_mean(unknown[0], LOSSES)}; "
                         f"available: {', '.join(LOSSES)}")
    try:
        seeds = [int(seed) for seed in parse_list(args.seeds, "seeds")]
    except ValueError:
        raise DocreError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers") from None
    for item in args.overrides:
        if item.startswith(RESERVED):
            raise DocreError(f"override {item!r}: set by compare_losses.py for each run (use --losses, --seeds, --output-dir)")
    output_dir = args.output_dir or Path("runs") / f"compare-{Path(args.config).stem}"
    stem = Path(args.config).stem
    # one row per loss: the same config, data and seeds, only loss.name differs
    table = Table(name=f"compare-{stem}", rows=[Row(f"{stem}-{loss}", str(Path(args.config).resolve()), [f"loss.name={loss}"])
                                                for loss in losses])
    runs = plan_runs(table, seeds, output_dir, args.overrides)  # fails on a bad override or a foreign run first
    for run in runs:
        print(f"{run.cfg.run_name}: {'finished earlier, skipped' if run.state == 'finished' else ACTIONS[run.state]}", flush=True)
    failed = run_grid(runs, jobs=args.jobs)
    failure = None
    if failed:
        names = ", ".join(run.cfg.run_name for run in failed)
        failure = DocreError(f"{len(failed)} of {plural(len(runs), 'run')} failed: {names} "
                             "(see their train.log; the same command retries them)")
        if len(failed) == len(runs):
            raise failure
    errors = {str(run.run_dir): read_failure(run.run_dir) or "failed (see its train.log)" for run in failed}
    return [(run.row.name, run.run_dir) for run in runs if run not in failed], errors, failure


def finished_runs(root: Path) -> tuple[list[tuple[str, Path]], dict[str, dict], dict[str, str]]:
    """The finished runs under `root` as (row name, run directory), grouped and ordered as
    summarize_runs.py does (a reproduce.py grid's rows in its grid.json order), the published
    numbers per row, and the failed runs (run directory -> the error of its failed.json, as
    summarize_runs.py reads it). Failed and unfinished runs are named on stdout and left out."""
    from docre.run_dir import RESULTS, read_failure
    from docre.summary import collect, failed_line

    found = collect(root)
    runs, waiting, failed = [], [], {}
    for group, run_dirs in found["groups"].items():
        for run_dir in run_dirs:
            if (run_dir / RESULTS).is_file():
                runs.append((group, run_dir))
            elif (error := read_failure(run_dir)) is not None:
                failed[str(run_dir)] = error
            else:
                waiting.append(run_dir.name)
    if failed:
        print(failed_line(failed), flush=True)
    if waiting:
        print(f"not finished, left out: {', '.join(waiting)}", flush=True)
    if not runs:
        raise DocreError(f"{root}: no finished run (a run directory with results.json) to tabulate")
    return runs, found["published"], failed


def run() -> None:
    """The `docre-compare-losses` console command (and `python scripts/compare_losses.py`)."""
    run_cli(main)
