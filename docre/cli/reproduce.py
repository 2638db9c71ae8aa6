"""Run a result table over seeds and tabulate mean ± std next to the published numbers.

TABLE is a name in configs/tables/ (e.g. redocred_mini, atgl_table2_redocred_bert) or a table file;
CONFIG files become one row each. Every (row, seed) is one training process (docre.grid) writing
<output-dir>/<table>/<row>-s<seed>/: finished runs (results.json) are skipped, interrupted ones (a
last/ checkpoint) are resumed, runs stopped before their first checkpoint start again. A run
directory holding a run of another config is an error, never silently mixed in. key=value
overrides apply to every run (e.g. train.epochs=2). A table with alpha_seed sweeps alpha
(loss.alpha: auto) on that seed first and trains its other seeds with the chosen alpha
(docre/tables.py). When the runs are done:
<output-dir>/<table>/table.md, table.json, curves.png and bars.png. Ctrl-C (or SIGTERM) stops the
current run at its next step with a checkpoint; the same command resumes the grid. A SIGTERM to
the run's own training process stops the grid too; a run that crashes is reported and the grid goes
on. --nproc N trains each run with N data-parallel processes (torchrun). --jobs N trains N runs at
once (docre.grid.child_env): on CPU each gets 1/N of the threads, on a GPU machine a group of --nproc
GPUs of its own (shared round robin when there are fewer groups than jobs); their output lines are
prefixed with the run's name. --rows A,B trains only
those rows (a table split over machines, or the rows a grid still lacks); the table still shows
every row's finished runs.

Examples:
  docre-reproduce redocred_mini --dry-run
  docre-reproduce redocred_mini --seeds 66,67,68 train.epochs=2
  docre-reproduce models_redocred_mini --rows ttm_re_ssr_pu,ttm_re_atgl
  docre-reproduce atgl_table3_redocred_mini --jobs 4            # four runs at a time (e.g. on four GPUs)
  docre-reproduce configs/redocred_mini/minilm_atl.yaml configs/redocred_mini/minilm_atgl.yaml --name mine
"""

import sys
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, did_you_mean, run_cli


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DocreError(f"--seeds {text!r}: expected comma-separated integers, e.g. 66,67,68") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise DocreError(f"--seeds {text!r}: expected distinct seeds, e.g. 66,67,68")
    return seeds


def choose_rows(table, text: str | None) -> list[str]:
    """The names of the rows to train: those of --rows, checked against the table, else every row."""
    names = [row.name for row in table.rows]
    if text is None:
        return names
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    for name in chosen:
        if name not in names:
            raise DocreError(f"--rows: table {table.name} has no row {name!r}{did_you_mean(name, names)}; "
                             f"its rows: {', '.join(names)}")
    if not chosen:
        raise DocreError("--rows: give comma-separated row names, e.g. --rows " + ",".join(names[:2]))
    return chosen


def tabulate(table, runs, seeds: list[int], out: Path) -> None:
    """Write <out>/table.md, table.json and, once a run has finished, curves.png and bars.png; print the table."""
    from docre.plots import plot_bars, plot_curves
    from docre.summary import markdown_table, summarize, write_summary

    groups = {row.name: [run.run_dir for run in runs if run.row is row] for row in table.rows}
    rows = summarize(groups, {row.name: row.published for row in table.rows}, {row.name: len(seeds) for row in table.rows})
    markdown, json_path = write_summary(rows, out, table.title or table.name, table.source)
    written = [markdown, json_path]
    if any(row["n"] for row in rows):
        written.append(plot_curves(groups, out / "curves.png", table.title or table.name))
        written.append(plot_bars(rows, out / "bars.png", table.title or table.name))
    print()
    print(markdown_table(rows, table.title or table.name, table.source))
    print("written: " + ", ".join(str(p) for p in written))


def recorded_seeds(out: Path) -> list[int]:
    """The seeds earlier commands on the folder `out` recorded in its grid.json ([] for a new folder)."""
    from docre.run_dir import read_json

    return read_json(out / "grid.json")["seeds"] if (out / "grid.json").is_file() else []


def record_grid(out: Path, table, seeds: list[int], overrides: list[str]) -> None:
    """Write <out>/grid.json: the table, its rows and the seeds of every command on this folder (commands
    split by --seeds, one per machine, add theirs), read by summarize_runs.py and compare_losses.py --runs."""
    from docre.utils import atomic_write_json

    earlier = recorded_seeds(out)
    atomic_write_json(out / "grid.json", {
        "table": table.name, "title": table.title, "source": table.source,
        "seeds": [*earlier, *(seed for seed in seeds if seed not in earlier)],
        "overrides": overrides, "command": sys.argv,
        "rows": [{"name": row.name, "config": row.config, "overrides": row.overrides, "published": row.published}
                 for row in table.rows],
    })


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-reproduce", __doc__)
    parser.add_argument("targets", nargs="+", metavar="TABLE|CONFIG",
                        help="a table (name in configs/tables/ or file), or config files (one row each); "
                             "key=value overrides for every run may follow")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the table's, else 66)")
    parser.add_argument("--output-dir", default="runs", metavar="DIR", help="runs go to DIR/<table>/<row>-s<seed>/")
    parser.add_argument("--name", help="the table's name when CONFIG files are given (default: grid)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel processes per run (torchrun), e.g. one per GPU")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs trained at once, each with 1/N of the CPU threads or GPUs of its own (default: 1)")
    parser.add_argument("--rows", metavar="A,B", help="train only these rows of the table (default: every row)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    args = parser.parse_intermixed_args()  # overrides may follow the options

    from docre import sweep
    from docre.grid import run_grid
    from docre.run_dir import ACTIONS
    from docre.tables import TABLES_DIR, load_table, plan_runs, table_from_configs, table_path
    from docre.utils import plural

    overrides = [t for t in args.targets if "=" in t and not Path(t).is_file()]
    targets = [t for t in args.targets if t not in overrides]
    if not targets:
        parser.error("name a table or at least one config file")
    if args.nproc < 1 or args.jobs < 1:
        parser.error("--nproc and --jobs must be at least 1")
    path = table_path(targets[0]) if len(targets) == 1 else None
    if path is not None:
        table = load_table(path)
    else:
        for target in targets:
            if not Path(target).is_file():
                known = ", ".join(sorted(p.stem for p in TABLES_DIR.glob("*.yaml")))
                raise DocreError(f"{target}: neither a table name ({known}) nor a file")
        table = table_from_configs(targets, args.name or "grid")
    seeds = parse_seeds(args.seeds) if args.seeds else table.seeds
    out = Path(args.output_dir).resolve() / table.name
    # the folder's table covers the seeds of every command on it (a grid split by --seeds): each of their
    # runs is checked against this command's settings, so that one row never averages two settings
    table_seeds = list(dict.fromkeys([*recorded_seeds(out), *seeds]))
    runs = plan_runs(table, table_seeds, out, overrides)
    chosen = choose_rows(table, args.rows)
    selected = [run for run in runs if run.row.name in chosen and run.seed in seeds]  # the runs this command trains

    print(f"{table.name}: {plural(len(chosen), 'row')} x {plural(len(seeds), 'seed')} = {plural(len(selected), 'run')} in {out}")
    for run in selected:
        print(f"  {run.cfg.run_name:<40} {run.state if args.dry_run else ACTIONS.get(run.state, run.state)}"
              f"{f' ({run.detail})' if run.detail else ''}")
    if args.dry_run:
        counts = {state: sum(run.state == state for run in selected) for state in [*ACTIONS, "waiting"]}
        print(", ".join(f"{n} {state}" for state, n in counts.items() if n) + ". Nothing was run (--dry-run).")
        return 0

    record_grid(out, table, seeds, overrides)
    # The alpha seed's sweeps first, in one queue with every run that does not wait for their choice
    # (with --jobs 2 a lone sweep would leave half the machine idle for hours); then the waiting runs.
    sweeps = [run for run in selected if run.seed == table.alpha_seed and sweep.is_auto(run.cfg)]
    ready = sweeps + [run for run in selected if run.state != "waiting" and run not in sweeps]
    failed = run_grid(ready, args.nproc, args.jobs)
    if any(run.state == "waiting" for run in selected):
        tried = {run.cfg.run_name for run in ready}  # a failed run is retried by the next command, not this one
        runs = plan_runs(table, table_seeds, out, overrides)  # the waiting runs now read their alpha seed's choice
        selected = [run for run in runs if run.row.name in chosen and run.seed in seeds]
        failed += run_grid([run for run in selected if run.state != "waiting" and run.cfg.run_name not in tried],
                           args.nproc, args.jobs)
    tabulate(table, runs, table_seeds, out)
    problems = []
    if failed:
        names = ", ".join(run.cfg.run_name for run in failed)
        problems.append(f"{len(failed)} of {plural(len(selected), 'run')} failed: {names} "
                        "(see their train.log; the same command retries them)")
    waiting = [run.cfg.run_name for run in selected if run.state == "waiting"]
    if waiting:
        problems.append(f"{plural(len(waiting), 'run')} waiting for the alpha seed's sweep: {', '.join(waiting)}")
    if problems:
        raise DocreError("; ".join(problems))
    return 0


def run() -> None:
    """The `docre-reproduce` console command (and `python scripts/reproduce.py`)."""
    run_cli(main)
