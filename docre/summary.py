"""Mean ± std tables over seeds from run directories, next to published numbers.

A run directory is any folder with a `config.yaml`; its final scores are its `results.json`
(written by `train()` when the run finished). Runs are grouped by their folder name without the
`-s<seed>` suffix (and by their parent folder when runs of several tables are gathered), so
`redocred_mini/minilm_atl-s66`, `-s67` and `-s68` form one row. Scores in results are fractions;
tables show percentages. The std is the sample standard deviation (n - 1) over seeds.
"""

import json
import math
import time
from pathlib import Path

from docre.errors import DocreError
from docre.report import EVIDENCE, LABELS
from docre.run_dir import read_failure, read_results
from docre.tables import METRICS, SEED_SUFFIX, load_table, table_path
from docre.utils import atomic_write_json, atomic_write_text

SPLITS = ("dev", "test")
COST_KEYS = ("wall_seconds", "train_seconds", "seconds_per_step", "steps", "peak_rss_mb", "peak_gpu_mb")


def find_runs(root: Path) -> list[Path]:
    """Run directories (folders with a config.yaml) under `root`, or `root` itself, sorted. Runs
    inside another run (an alpha sweep's values, RUN/alpha_sweep/alpha=<v>/) are left out: the
    outer run stands for them; `find_runs(RUN / "alpha_sweep")` lists them."""
    root = Path(root)
    if not root.is_dir():
        raise DocreError(f"{root}: not a directory")
    if (root / "config.yaml").is_file():
        return [root]
    runs = sorted(path.parent for path in root.rglob("config.yaml") if not any(p.startswith(".") for p in path.parts))
    found = set(runs)
    return [run for run in runs if not any(parent in found for parent in run.parents)]


def group_runs(run_dirs: list[Path], root: Path | None = None) -> dict[str, list[Path]]:
    """{row name: run directories}: names without the seed suffix, prefixed by the parent folder
    (relative to `root`) when the runs come from several folders."""
    parents = {run_dir.parent for run_dir in run_dirs}
    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        name = SEED_SUFFIX.sub("", run_dir.name)
        if len(parents) > 1 and root is not None:
            relative = run_dir.parent.relative_to(root) if run_dir.parent != Path(root) else Path(".")
            name = name if str(relative) == "." else f"{relative.as_posix()}/{name}"
        groups.setdefault(name, []).append(run_dir)
    return groups


def run_seed(run_dir: Path) -> int | None:
    """The run's seed, from its config.yaml (or its name)."""
    import yaml

    try:
        seed = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}).get("seed")
        if isinstance(seed, int):
            return seed
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    match = SEED_SUFFIX.search(Path(run_dir).name)
    return int(match.group(1)) if match else None


def run_setting(run_dir: Path) -> tuple[str, str]:
    """(model.name, the loss with its keywords, e.g. "atgl (alpha=16.5)", or "atgl (alpha=auto: 4.125)"
    for an alpha chosen on dev) from the run's config.yaml; the defaults where it leaves them out, "?"
    where it cannot be read."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
        model, loss = (cfg.get("model") or {}).get("name", "atlop"), dict(cfg.get("loss") or {"name": "atl"})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return "?", "?"
    name = loss.pop("name", "atl")
    if loss.get("alpha") == "auto":  # the alpha its sweep chose on dev, once it has (results.json)
        chosen = (read_results(run_dir) or {}).get("alpha")
        loss["alpha"] = f"auto: {chosen:g}" if isinstance(chosen, (int, float)) else "auto"
    return str(model), f"{name} ({', '.join(f'{k}={v}' for k, v in loss.items())})" if loss else str(name)


def read_run_results(run_dir: Path) -> dict | None:
    """The run's results.json (None while it is not finished); a damaged one, truncated or without
    any dev or test scores, is refused with what to do about it rather than tabulated as blanks."""
    hint = "delete the run (or its results.json) to train it again"
    try:
        results = read_results(run_dir)
    except DocreError as error:  # truncated (e.g. the disk filled up while it was written)
        raise DocreError(f"{error}; {hint}") from None
    if results is not None and not any(isinstance(results.get(split), dict) and results[split] for split in SPLITS):
        # one such run would blank its row's means: a score missing from any seed is left out of them
        raise DocreError(f"{Path(run_dir) / 'results.json'}: no dev or test scores; {hint}")
    return results


def failed_line(failed: dict[str, str]) -> str:
    """The table's line naming the failed runs (run dir -> the error of its failed.json)."""
    return (f"Failed ({len(failed)}; their failed.json): "
            + "; ".join(f"{Path(p).name}: {error}" for p, error in failed.items()) + ".")


def mean_std(values: list[float]) -> dict:
    """{"mean", "std" (sample, None for one value), "values"}."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std, "values": list(values)}


def summarize(groups: dict[str, list[Path]], published: dict[str, dict] | None = None,
              expected: dict[str, int] | None = None) -> list[dict]:
    """One summary row per group: its model and loss, mean/std over its finished runs of every number
    in their dev and test scores and of their costs, the published numbers, the runs whose last
    process ended in an error ("failed": run dir -> the error, from failed.json) and the others not
    finished yet ("unfinished": running, stopped, or killed before they could say).

    Args:
        groups: row name -> run directories (finished or not).
        published: row name -> published numbers (table file format, percentages).
        expected: row name -> number of runs the table asks for.
    """
    published, expected = published or {}, expected or {}
    rows = []
    for name, run_dirs in groups.items():
        finished = [(run_dir, results) for run_dir in run_dirs if (results := read_run_results(run_dir)) is not None]
        failed = {str(d): error for d in sorted(run_dirs) if (error := read_failure(d)) is not None}
        settings = [run_setting(run_dir) for run_dir in run_dirs]
        row = {
            "name": name,
            "model": " / ".join(dict.fromkeys(model for model, _ in settings)),
            "loss": " / ".join(dict.fromkeys(loss for _, loss in settings)),
            "n": len(finished),
            "expected": expected.get(name),
            "seeds": [run_seed(run_dir) for run_dir, _ in finished],
            "run_dirs": [str(run_dir) for run_dir, _ in finished],
            "failed": failed,
            "unfinished": sorted(str(d) for d in run_dirs if d not in {r for r, _ in finished} and str(d) not in failed),
            "published": published.get(name, {}),
        }
        for split in SPLITS:
            scores = [results.get(split) or {} for _, results in finished]
            keys = [k for k, v in (scores[0].items() if scores else []) if _is_number(v)]
            row[split] = {k: mean_std([s[k] for s in scores]) for k in keys if all(_is_number(s.get(k)) for s in scores)}
        row["cost"] = {k: mean_std([results[k] for _, results in finished]) for k in COST_KEYS
                       if finished and all(_is_number(results.get(k)) for _, results in finished)}
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], title: str = "", source: str = "") -> str:
    """Our mean ± std per row, with the published numbers on a line below it where known."""
    columns = [(split, metric) for split in SPLITS for metric in METRICS
               if any(metric in row[split] or f"{split}_{metric}" in row["published"] for row in rows)]
    # evidence P/R/F1 on test, where some row's model predicts evidence (DREEAM), as in report.results_table
    if any(_predicts_evidence(row) for row in rows):
        columns += [("test", key) for key, _ in EVIDENCE if any(key in row["test"] for row in rows)]
    has_cost = any(row["cost"] for row in rows)
    header = ["row", "model", "loss", "source", "n"] + [f"{split} {LABELS[metric]}" for split, metric in columns]
    header += ["time/run", "s/step", "peak memory"] if has_cost else []
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for row in rows:
        count = f"{row['n']}/{row['expected']}" if row["expected"] is not None else str(row["n"])
        cells = [row["name"], row["model"], row["loss"], "docre", count]
        cells += ["–" if metric.startswith("evidence_") and not _predicts_evidence(row)
                  else _format(row[split].get(metric), percent=True) for split, metric in columns]
        if has_cost:
            cost = row["cost"]
            cells += [_duration(cost.get("wall_seconds")), _number(cost.get("seconds_per_step"), "{:.2f}"), _memory(cost)]
        lines.append("| " + " | ".join(cells) + " |")
        paper = row["published"]
        if any(k != "note" for k in paper):
            cells = ["", "", "", "paper", ""]
            for split, metric in columns:
                value, std = paper.get(f"{split}_{metric}"), paper.get(f"{split}_{metric}_std")
                cells.append("–" if value is None else f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else ""))
            cells += ["", "", ""] if has_cost else []
            lines.append("| " + " | ".join(cells) + " |")
        if paper.get("note"):
            notes.append(f"{row['name']}: {paper['note']}")
    lines += ["", "docre: mean ± sample std over seeds (n = finished runs), in %; time/run is wall time per run"
              " (start-up, training, evaluation); peak memory is the GPU's where one was used, else the process's."]
    if any(metric.startswith("evidence_") for _, metric in columns):
        lines.append("Evi P/R/F1: test evidence sentences, scored over the correctly predicted relations (official "
                     "DocRED scorer); – for models that predict no evidence.")
    if source:
        lines.append(f"Published numbers: {source}.")
    lines += [f"- {note}" for note in notes]
    failed = {path: error for row in rows for path, error in row["failed"].items()}
    if failed:
        lines.append(failed_line(failed))
    missing = [path for row in rows for path in row["unfinished"]]
    if missing:
        lines.append(f"Not finished yet ({len(missing)}): " + ", ".join(Path(p).name for p in missing) + ".")
    return "\n".join(lines) + "\n"


def write_summary(rows: list[dict], out_dir: Path, title: str = "", source: str = "", stem: str = "table") -> tuple[Path, Path]:
    """Write <out_dir>/<stem>.md and <stem>.json; return their paths."""
    out_dir = Path(out_dir)
    markdown, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    atomic_write_text(markdown, markdown_table(rows, title, source))
    atomic_write_json(json_path, {"title": title, "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "rows": rows})
    return markdown, json_path


def _predicts_evidence(row: dict) -> bool:
    """The row's model predicts evidence (DREEAM): its test runs predicted some evidence sentences."""
    return row["test"].get("num_evidence_predicted", {}).get("mean", 0) > 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _format(stat: dict | None, percent: bool) -> str:
    if stat is None:
        return "–"
    scale = 100 if percent else 1
    text = f"{stat['mean'] * scale:.2f}"
    return text + (f" ± {stat['std'] * scale:.2f}" if stat["std"] is not None else "")


def _number(stat: dict | None, pattern: str) -> str:
    return "–" if stat is None else pattern.format(stat["mean"])


def _duration(stat: dict | None) -> str:
    if stat is None:
        return "–"
    seconds = stat["mean"]
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _memory(cost: dict) -> str:
    if "peak_gpu_mb" in cost:
        return f"{cost['peak_gpu_mb']['mean'] / 1024:.1f} GiB GPU"
    if "peak_rss_mb" in cost:
        return f"{cost['peak_rss_mb']['mean'] / 1024:.1f} GiB RAM"
    return "–"


def collect(root: Path, table=None) -> dict:
    """Runs under `root`, grouped into rows, with what is known about the tables they belong to:
    from `table` (a docre.tables.Table) if given, else from the grid.json that reproduce.py leaves
    in each table's folder (row order, published numbers, number of seeds asked for).

    Returns:
        {"groups": {row: [run dirs]}, "published": {row: {...}}, "expected": {row: n},
         "title": str, "source": str}
    """
    root = Path(root)
    runs = find_runs(root)
    groups = group_runs(runs, root)
    if not groups:
        raise DocreError(f"{root}: no run directories (folders with a config.yaml) found")
    parents = sorted({run.parent for run in runs})
    grids = []  # (row-name prefix, grid)
    if table is not None:
        rows = [{"name": row.name, "published": row.published} for row in table.rows]
        # its seeds: the number of runs each row asks for, shown as n/expected like grid.json's
        grid = {"title": table.title, "source": table.source, "seeds": table.seeds, "rows": rows}
        grids = [(f"{p.relative_to(root).as_posix()}/" if len(parents) > 1 and p != root else "", grid) for p in parents]
    else:
        for parent in parents:
            if (parent / "grid.json").is_file():
                try:
                    grid = json.loads((parent / "grid.json").read_text(encoding="utf-8"))
                except ValueError as error:
                    raise DocreError(f"{parent / 'grid.json'}: not valid JSON ({error})") from None
                if not isinstance(grid, dict) or not all(isinstance(row, dict) and "name" in row
                                                         for row in grid.get("rows", [])):
                    raise DocreError(f"{parent / 'grid.json'}: expected an object whose rows each have a name, "
                                     "as reproduce.py writes it")
                grids.append((f"{parent.relative_to(root).as_posix()}/" if len(parents) > 1 and parent != root else "", grid))
    published, expected, order = {}, {}, []
    for prefix, grid in grids:
        for row in grid.get("rows", []):
            name = prefix + row["name"]
            order.append(name)
            published[name] = row.get("published") or {}
            if grid.get("seeds"):
                expected[name] = len(grid["seeds"])
    ordered = {name: groups[name] for name in order if name in groups}
    ordered |= {name: groups[name] for name in sorted(groups) if name not in ordered}
    single = grids[0][1] if len(grids) == 1 else {}
    return {"groups": ordered, "published": published, "expected": expected,
            "title": single.get("title", ""), "source": single.get("source", "")}


def summarize_folder(runs_dir: str, table_name: str | None = None) -> tuple[dict, list[dict]]:
    """`collect` and `summarize` of the runs under `runs_dir`, with the published numbers of the
    table `table_name` (a name in configs/tables or a table file) when one is given, as the
    `--table` option of the summary and plot scripts asks. Returns (collected, rows)."""
    table = None
    if table_name:
        path = table_path(table_name)
        if path is None:
            raise DocreError(f"--table {table_name}: no such table (configs/tables/NAME.yaml or a table file)")
        table = load_table(path)
    found = collect(Path(runs_dir), table)
    return found, summarize(found["groups"], found["published"], found["expected"])
