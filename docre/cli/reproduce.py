"""Run a result table over seeds and tabulate mean ± std next to the published numbers.

    python scripts/reproduce.py TABLE [--seeds 66,67,68] [--dry-run] [--output-dir runs] [key=value ...]
    python scripts/reproduce.py CONFIG [CONFIG ...] --name NAME [--seeds ...] [key=value ...]

TABLE is a name in configs/tables/ (e.g. redocred_mini, atgl_table2_redocred_bert) or a table file;
CONFIG files become one row each. Every (row, seed) is one `python train.py` process writing
<output-dir>/<table>/<row>-s<seed>/: finished runs (results.json) are skipped, interrupted ones (a
last/ checkpoint) are resumed, runs stopped before their first checkpoint start again. A run
directory holding a run of another config is an error, never silently mixed in. key=value
overrides apply to every run (e.g. train.epochs=2). When the runs are done:
<output-dir>/<table>/table.md, table.json, curves.png and bars.png. Ctrl-C (or SIGTERM) stops the
current run at its next step with a checkpoint; the same command resumes the grid. --nproc N
trains each run with N data-parallel processes (torchrun).
"""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import prog
from docre.errors import DocreError, run_cli

ROOT = Path(__file__).resolve().parents[2]  # the repository (docre is installed editable): train.py, configs/tables/


class ChildSignals:
    """Forward SIGINT/SIGTERM to the training process. The child runs in its own process group, so
    a Ctrl-C in the terminal reaches it once, through us: the first signal asks it to stop after the
    current step with a checkpoint, a second one to stop at once (docre.trainer's handling)."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.received: list[int] = []

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        print(f"\n{name}: stopping the current run at its next step (again: at once)", file=sys.stderr, flush=True)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def __enter__(self) -> "ChildSignals":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def run(self, command: list[str]) -> int:
        # its own process group in our session, i.e. setpgid(0, 0): Popen's process_group=0 from Python 3.11 on
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        self.process = subprocess.Popen(command, **group)
        try:
            return self.process.wait()
        finally:
            self.process = None


def train_command(run, nproc: int) -> list[str]:
    """The train.py command line of a run: resume from its checkpoint, start again, or start."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={nproc}"]
    train_py = str(ROOT / "train.py")
    if run.state == "unfinished":
        return [*launcher, train_py, "--resume", str(run.run_dir)]
    extra = ["train.overwrite=true"] if run.state == "stale" else []
    return [*launcher, train_py, str(run.config_path), *run.overrides, *extra]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DocreError(f"--seeds {text!r}: expected comma-separated integers, e.g. 66,67,68") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise DocreError(f"--seeds {text!r}: expected distinct seeds, e.g. 66,67,68")
    return seeds


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


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = argparse.ArgumentParser(prog=prog("docre-reproduce"), description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", metavar="TABLE_OR_CONFIGS [key=value ...]")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the table's, else 66)")
    parser.add_argument("--output-dir", default="runs", help="runs go to OUTPUT_DIR/<table>/<row>-s<seed>/ (default: runs)")
    parser.add_argument("--name", help="the table's name when CONFIG files are given (default: grid)")
    parser.add_argument("--nproc", type=int, default=1, help="data-parallel processes per run (torchrun), e.g. one per GPU")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    args = parser.parse_intermixed_args()  # overrides may follow the options

    from docre.tables import load_table, plan_runs, table_from_configs, table_path
    from docre.utils import atomic_write_json

    overrides = [t for t in args.targets if "=" in t and not Path(t).is_file()]
    targets = [t for t in args.targets if t not in overrides]
    if not targets:
        parser.error("name a table or at least one config file")
    if args.nproc < 1:
        parser.error("--nproc must be at least 1")
    path = table_path(targets[0]) if len(targets) == 1 else None
    if path is not None:
        table = load_table(path)
    else:
        for target in targets:
            if not Path(target).is_file():
                known = ", ".join(sorted(p.stem for p in (ROOT / "configs" / "tables").glob("*.yaml")))
                raise DocreError(f"{target}: neither a table name ({known}) nor a file")
        table = table_from_configs(targets, args.name or "grid")
    seeds = parse_seeds(args.seeds) if args.seeds else table.seeds
    runs = plan_runs(table, seeds, Path(args.output_dir), overrides)
    out = Path(args.output_dir).resolve() / table.name

    todo = [run for run in runs if run.state != "done"]
    print(f"{table.name}: {len(table.rows)} rows x {len(seeds)} seeds = {len(runs)} runs in {out}")
    for run in runs:
        action = {"done": "done, skipped", "unfinished": "resume", "stale": "start again", "missing": "run"}[run.state]
        if args.dry_run:
            action = run.state
        print(f"  {run.cfg.run_name:<40} {action}{f' ({run.detail})' if run.detail else ''}")
    if args.dry_run:
        counts = {state: sum(run.state == state for run in runs) for state in ("done", "unfinished", "stale", "missing")}
        print(", ".join(f"{n} {state}" for state, n in counts.items() if n) + ". Nothing was run (--dry-run).")
        return 0

    atomic_write_json(out / "grid.json", {
        "table": table.name, "title": table.title, "source": table.source, "seeds": seeds,
        "overrides": overrides, "command": sys.argv,
        "rows": [{"name": row.name, "config": row.config, "overrides": row.overrides, "published": row.published}
                 for row in table.rows],
    })
    failed = []
    with ChildSignals() as signals:
        for index, run in enumerate(todo, 1):
            if signals.received:  # arrived between two runs
                raise DocreError(f"interrupted before {run.cfg.run_name}; run the same command again to go on")
            print(f"[{index}/{len(todo)}] {run.cfg.run_name}: {run.state} -> training", flush=True)
            status = signals.run(train_command(run, args.nproc))
            if signals.received:
                raise DocreError(f"interrupted during {run.cfg.run_name} (exit status {status}); "
                                 f"run the same command again to resume: {' '.join(sys.argv)}")
            if status != 0:
                failed.append(run)
                print(f"[{index}/{len(todo)}] {run.cfg.run_name} failed (exit status {status}); log: {run.run_dir / 'train.log'}",
                      file=sys.stderr, flush=True)

    tabulate(table, runs, seeds, out)
    if failed:
        raise DocreError(f"{len(failed)} of {len(runs)} runs failed: {', '.join(run.cfg.run_name for run in failed)} "
                         "(see their train.log; the same command retries them)")
    return 0


def run() -> None:
    """The `docre-reproduce` console command (and `python scripts/reproduce.py`)."""
    run_cli(main)
