"""Train a DocRE model from a config file.

Writes runs/<run_name>/ (config, metrics.jsonl, best.safetensors, predictions, results.json) and
prints the dev/test results table. A key=value override sets one config key, dotted as in the
file (train.epochs=2, loss.alpha=8); --list keys prints every key with its default and meaning,
--list models and --list losses the names model.name and loss.name take (with each loss's keywords).
Multi-GPU: torchrun --nproc-per-node N train.py CONFIG.

Examples:
  docre-train configs/quickstart.yaml                                 train with a config file
  docre-train configs/quickstart.yaml train.epochs=2 seed=67          ... with overrides
  docre-train configs/quickstart.yaml loss.name=atgl loss.alpha=auto  ATGL with alpha tuned on dev (docs/alpha.md)
  docre-train --resume runs/quickstart-s66                            continue an interrupted run from its last/
  docre-train --list losses                                           the losses and their keywords
"""

from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli

LISTS = ("models", "losses", "keys")


def listing(what: str) -> str:
    """What `--list models|losses|keys` prints: one line per choice, its description taken from where
    the choice is defined (the comments of MODELS, LOSSES and the config schema)."""
    import json

    from docre.config import config_keys, documented_names

    if what == "keys":
        def shown(value) -> str:  # as written in YAML or an override
            return json.dumps(value) if isinstance(value, bool | dict | list) or value == "" else str(value)

        rows = [(f"{key}={shown(default)}", about) for key, default, about in config_keys()]
    else:
        import inspect

        from docre import losses, models

        module, table = (models, models.MODELS) if what == "models" else (losses, losses.LOSSES)
        about = documented_names(inspect.getsource(module))
        rows = []
        for name in table:
            if what == "losses":
                keywords = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v}"
                                     for k, v in losses.loss_keywords(name).items())
                name = f"{name}({keywords})"
            rows.append((name, about.get(name.split("(")[0], "")))
    width = max(len(left) for left, _ in rows)
    return "\n".join(f"{left:<{width}}  {right}".rstrip() for left, right in rows)


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-train", __doc__)
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="the config file (YAML; not with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (its config.yaml is used)")
    parser.add_argument("--list", choices=LISTS, help="print the models, the losses (with their keywords) or the "
                                                      "config keys (with defaults and meaning), and exit")
    args = parser.parse_args()
    if args.list:
        print(listing(args.list))
        return 0

    from docre.config import load_config

    if args.resume:
        from docre.run_dir import is_export

        given = [args.config, *args.overrides] if args.config is not None else []  # argparse put the first override in CONFIG
        run_dir = Path(args.resume)
        config, overrides = run_dir / "config.yaml", [*given, f"train.resume={args.resume}"]
        stray = next((arg for arg in given if "=" not in arg), None)
        if stray is not None:
            raise DocreError(f"--resume continues a run with its own config.yaml: give only key=value overrides, not {stray!r}")
        if not run_dir.exists():
            raise DocreError(f"{args.resume}: the directory does not exist")
        # an export has a config.yaml (and often results.json) too, but no checkpoint (last/) to go on from
        if is_export(run_dir):
            raise DocreError(f"{args.resume}: an exported model (scripts/export.py), not a run directory; "
                             "it cannot be resumed")
        if not config.is_file():
            raise DocreError(f"{args.resume}: not a run directory (no config.yaml)")
    elif args.config is not None:
        config, overrides = args.config, args.overrides
    else:
        parser.error("give a config file, or --resume RUN_DIR")
    cfg = load_config(config, overrides)  # fails here, before any model is loaded, on a bad key or value

    from docre import distributed
    from docre.report import breakdown_table, results_table
    from docre.sweep import run

    results = run(cfg)  # train(cfg), or the dev-tuned alpha sweep when loss.alpha=auto (docre/sweep.py)
    distributed.shutdown()  # here, not in train(): the runs of an alpha sweep share one process group
    if distributed.rank() != 0:
        return 0
    if "alpha" in results:
        print(f"\n{cfg.run_name}: alpha {results['alpha']:g} chosen on dev ({results['run_dir']}/alpha_sweep.json)")
    if results["best_step"] is None:  # no dev split: the last step's weights
        print(f"\n{cfg.run_name}: no dev split, the weights after step {results['steps']} ({results['run_dir']})")
    else:
        print(f"\n{cfg.run_name}: best dev checkpoint at step {results['best_step']} ({results['run_dir']})")
    print(results_table(results))
    details = breakdown_table(results.get("breakdown", {}))
    if details:  # the per-relation tables are in results.json; evaluate.py prints them
        print(f"\n{details}")
    print(f"{results['seconds_per_step']:.2f} s/step, peak memory {results['peak_rss_mb']:.0f} MiB")
    return 0


def run() -> None:
    """The `docre-train` console command (and `python train.py`)."""
    run_cli(main)


if __name__ == "__main__":  # python -m docre.cli.train (how docre.grid starts a run)
    run()
