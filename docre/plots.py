"""Plots of a grid of runs (matplotlib, Agg backend, PNG): learning curves and the result table.

Learning curves come from each run's metrics.jsonl: dev F1 at every evaluation and the training
loss averaged per epoch, drawn as the mean over the seeds of a row with a band of ± one std.
"""

import json
import math
from pathlib import Path

from docre.report import LABELS


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def epoch_curves(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """{"dev_f1": (epochs, F1 in %), "loss": (epochs, mean training loss)} of one run.

    Dev evaluations are placed at step / steps per epoch (so evaluations every N steps fall between
    epochs); the loss of epoch e (1-based) is the mean of the logged windows that end in it.
    """
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if r.get("type") == "train" and "loss" in r]
    steps_per_epoch = _steps_per_epoch(train_rows)
    dev_x, dev_y = [], []
    for row in rows:
        if row.get("type") == "eval" and row.get("split") == "dev" and "f1" in row:
            x = row["step"] / steps_per_epoch if steps_per_epoch else float(row.get("epoch", 0))
            dev_x.append(round(x, 6))
            dev_y.append(100 * row["f1"])
    by_epoch: dict[int, list[float]] = {}
    for row in train_rows:
        if math.isfinite(row["loss"]):
            by_epoch.setdefault(max(1, math.ceil(row["epoch"] - 1e-9)), []).append(row["loss"])
    epochs = sorted(by_epoch)
    return {"dev_f1": (dev_x, dev_y), "loss": ([float(e) for e in epochs], [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs])}


def mean_band(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list[float]]:
    """(x, mean, std) over curves at every x any of them has (std 0 where only one has it)."""
    values: dict[float, list[float]] = {}
    for xs, ys in curves:
        for x, y in zip(xs, ys):
            values.setdefault(x, []).append(y)
    xs = sorted(values)
    means = [sum(values[x]) / len(values[x]) for x in xs]
    stds = [math.sqrt(sum((v - m) ** 2 for v in values[x]) / (len(values[x]) - 1)) if len(values[x]) > 1 else 0.0
            for x, m in zip(xs, means)]
    return xs, means, stds


def plot_curves(groups: dict[str, list[Path]], path: Path, title: str = "") -> Path:
    """Dev F1 and training loss per epoch, one line (mean) and band (± std) per row."""
    plt = _pyplot()
    figure, (dev_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, run_dirs) in enumerate(groups.items()):
        curves = [epoch_curves(run_dir) for run_dir in run_dirs]
        color = f"C{index % 10}"
        for axis, key in ((dev_axis, "dev_f1"), (loss_axis, "loss")):
            xs, means, stds = mean_band([c[key] for c in curves if c[key][0]])
            if not xs:
                continue
            label = f"{name} (n={sum(1 for c in curves if c[key][0])})"
            axis.plot(xs, means, marker="o", markersize=3, color=color, label=label)
            low, high = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
            axis.fill_between(xs, low, high, color=color, alpha=0.2)
    dev_axis.set(xlabel="epoch", ylabel="dev F1 (%)", title="dev F1")
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="training loss (mean per epoch)")
    for axis in (dev_axis, loss_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_bars(rows: list[dict], path: Path, title: str = "") -> Path:
    """Bars of dev F1, test F1 and test Ign F1 (mean, error bar ± std) per row of a summary
    (docre.summary.summarize), with the published number as a black mark where known."""
    plt = _pyplot()
    metrics = [(split, metric) for split, metric in (("dev", "f1"), ("test", "f1"), ("test", "ign_f1"))
               if any(metric in row[split] or f"{split}_{metric}" in row["published"] for row in rows)]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) * max(1, len(metrics)) / 2 + 2), 4))
    width = 0.8 / max(1, len(metrics))
    paper_label = "paper"  # one legend entry for the marks
    for m, (split, metric) in enumerate(metrics):
        offsets = [r + (m - (len(metrics) - 1) / 2) * width for r in range(len(rows))]
        stats = [row[split].get(metric) for row in rows]
        heights = [100 * s["mean"] if s else 0.0 for s in stats]
        errors = [100 * s["std"] if s and s["std"] is not None else 0.0 for s in stats]
        label = f"{split} {LABELS[metric]}"
        axis.bar(offsets, heights, width, yerr=errors, capsize=3, color=f"C{m}", label=label)
        key = f"{split}_{metric}"
        paper = [(x, row["published"][key]) for x, row in zip(offsets, rows) if key in row["published"]]
        if paper:
            axis.scatter([x for x, _ in paper], [v for _, v in paper], marker="_", s=400, color="black", zorder=3,
                         label=paper_label)
            paper_label = None
    axis.set_xticks(range(len(rows)), [row["name"] for row in rows], rotation=20, ha="right")
    axis.set_ylabel("%")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    return _save(figure, path)


def sweep_curves(run_dir: Path) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """{(split, metric): (alphas, values in %)} from RUN_DIR/alpha_sweep.json (docre.sweep), for
    split dev/test and metric f1/precision/recall; values a run lacks are left out."""
    from docre.errors import DocreError

    path = Path(run_dir) / "alpha_sweep.json"
    if not path.is_file():
        raise DocreError(f"{run_dir}: no alpha_sweep.json (not a finished loss.alpha=auto run)")
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    curves = {}
    for split in ("dev", "test"):
        for metric in ("f1", "precision", "recall"):
            points = [(row["alpha"], 100 * row[split][metric]) for row in runs if metric in row.get(split, {})]
            curves[(split, metric)] = ([a for a, _ in points], [v for _, v in points])
    return curves


def plot_alpha_sweep(run_dirs: list[Path], path: Path, title: str = "") -> Path:
    """F1, precision and recall (dev and test) against alpha on a log axis: the mean over the runs
    (e.g. seeds) with a band of ± one std, and the chosen alphas as dotted lines."""
    plt = _pyplot()
    all_curves = [sweep_curves(run_dir) for run_dir in run_dirs]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True)
    for axis, metric in zip(axes, ("f1", "precision", "recall")):
        for color, split in (("C0", "dev"), ("C1", "test")):
            xs, means, stds = mean_band([curves[(split, metric)] for curves in all_curves if curves[(split, metric)][0]])
            if not xs:
                continue
            axis.plot(xs, means, marker="o", color=color, label=f"{split} (n={len(run_dirs)})")
            axis.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                              color=color, alpha=0.2)
        for run_dir in run_dirs:
            chosen = json.loads((Path(run_dir) / "alpha_sweep.json").read_text(encoding="utf-8"))["chosen_alpha"]
            axis.axvline(chosen, color="gray", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        alphas = sorted({x for curves in all_curves for x in curves[("dev", metric)][0]})
        axis.set_xticks(alphas, [f"{x:g}" for x in alphas])  # the grid's own values, not powers of ten
        axis.minorticks_off()
        axis.set(xlabel="alpha (log scale)", ylabel=f"{LABELS[metric]} (%)", title=LABELS[metric])
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle((f"{title}: " if title else "") + "ATGL alpha sweep (dotted: chosen alpha)")
    return _save(figure, path)


def _steps_per_epoch(train_rows: list[dict]) -> int | None:
    """A train row at step s in epoch e (0-based) has epoch = e + (s - e * spe) / spe = s / spe."""
    for row in reversed(train_rows):
        if row.get("epoch", 0) > 0:
            return max(1, round(row["step"] / row["epoch"]))
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    from docre.utils import atomic_open

    path = Path(path)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
