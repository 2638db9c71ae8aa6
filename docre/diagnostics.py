"""Threshold diagnostics (ATGL paper Fig. 2/3): errors, and where each pair's decision threshold
sits between its positive and negative relation logits. Definitions: docs/losses.md.

Works from the logits a run saves (dev_logits.safetensors / test_logits.safetensors: "logits" fp16
[P, C], "pairs_per_doc" int32 [D], "facts" int32 [K, 2] = (pair index, relation id)), the run's
config.yaml and decode.json, so no model or data is needed.

The decision threshold t of a pair is the logit a relation must exceed: the TH logit s_0 for the
threshold-class losses, or the loss's own `decision_threshold(logits)` (BCE: logit(theta); balanced
softmax: 0); a loss with a label space of its own (AMTL) gives each relation's score against its
own threshold, with t = 0 (`losses.relation_margins`). Relation classes are 1..C-1; class 0 is
never a positive or a negative.
"""

import json
from pathlib import Path

import torch

from docre.data.collate import facts_to_labels
from docre.errors import DocreError
from docre.losses import relation_margins
from docre.run_dir import BEST_SCORES, REL2ID, RESULTS, load_config_and_loss, read_json
from docre.utils import atomic_open

SPLITS = ("dev", "test")
# Most negative margins drawn in a margin histogram (a test split has ~18 million; a sample suffices).
PLOT_SAMPLE = 200_000


def load_logits(path: str | Path, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read a saved logits file. `num_classes`: the run's relation classes C, where its loss has a
    label space of its own (the logits then have its `num_outputs` columns); default the logits' width.

    Returns:
        logits [P, K] float32, labels [P, C] multi-hot float32 (column 0 = NA), pairs_per_doc [D].
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DocreError(f"{path}: logits file not found (runs save them with eval.save_logits=true)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise DocreError(f"{path}: not a readable safetensors file ({error})") from None
    missing = {"logits", "pairs_per_doc", "facts"} - tensors.keys()
    if missing:
        raise DocreError(f"{path}: missing tensor(s) {', '.join(sorted(missing))}")
    logits, pairs_per_doc, facts = tensors["logits"].float(), tensors["pairs_per_doc"], tensors["facts"].long()
    if logits.dim() != 2 or int(pairs_per_doc.sum()) != logits.size(0):
        raise DocreError(f"{path}: logits {tuple(logits.shape)} do not match pairs_per_doc (sum {int(pairs_per_doc.sum())})")
    num_classes = num_classes or logits.size(1)
    if len(facts) and (facts.min() < 0 or facts[:, 0].max() >= logits.size(0) or facts[:, 1].max() >= num_classes):
        raise DocreError(f"{path}: facts refer to pairs or classes outside the logits {tuple(logits.shape)}")
    return logits, facts_to_labels(facts, logits.size(0), num_classes), pairs_per_doc


def error_counts(decoded: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """False positives and negatives of decoded [P, C] predictions against multi-hot labels [P, C],
    over (pair, relation) facts: the official scorer's num_predicted - num_correct and
    num_gold - num_correct when each pair is one (title, head, tail)."""
    predicted, gold = decoded[:, 1:] > 0, labels[:, 1:] > 0
    correct = int((predicted & gold).sum())
    num_predicted, num_gold = int(predicted.sum()), int(gold.sum())
    return {"num_predicted": num_predicted, "num_gold": num_gold, "num_correct": correct,
            "false_positives": num_predicted - correct, "false_negatives": num_gold - correct}


def _mean_std(values: torch.Tensor) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    values = values.double()
    return float(values.mean()), float(values.std(unbiased=False))


def relative_offsets(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """[P] float64 (t - mean s_N) / (mean s_P - mean s_N); NaN where P or N is empty or the value
    is not finite (equal means, infinite threshold)."""
    relations = logits[:, 1:].float()  # [P, R]
    gold = labels[:, 1:] > 0
    num_positive, num_negative = gold.sum(1), (~gold).sum(1)
    mean_positive = (relations * gold).sum(1, dtype=torch.float64) / num_positive.clamp_min(1)
    mean_negative = (relations * ~gold).sum(1, dtype=torch.float64) / num_negative.clamp_min(1)
    offset = (thresholds.double() - mean_negative) / (mean_positive - mean_negative)
    defined = (num_positive > 0) & (num_negative > 0) & torch.isfinite(offset)
    return torch.where(defined, offset, torch.full_like(offset, float("nan")))


def threshold_statistics(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """Where the threshold t sits between positive and negative relation logits.

    Pairs with gold relations (P non-empty, N non-empty):
        offset = (t - mean s_N) / (mean s_P - mean s_N): 0 at the negatives' mean, 1 at the
        positives' mean; mean and std over pairs where it is finite (a zero denominator or an
        infinite t leaves it undefined; those pairs are counted).
        violation: not (every s_P > t > every s_N).
    NA pairs (P empty; the offset does not apply):
        margin = t - max s_N (> 0: nothing passes the threshold); mean and std.
        violation: not (t > every s_N), i.e. some relation logit reaches the threshold.

    Args:
        logits: [P, C]. labels: [P, C] multi-hot. thresholds: [P] decision threshold per pair.
    """
    relations = logits[:, 1:].float()  # [P, R]; float32 holds saved fp16 logits exactly
    gold = labels[:, 1:] > 0  # [P, R]
    t = thresholds.float()  # [P]
    num_positive = gold.sum(1)  # [P]
    inf = torch.tensor(float("inf"))
    min_positive = torch.where(gold, relations, inf).amin(1)  # [P]; +inf when P is empty
    max_negative = torch.where(gold, -inf, relations).amax(1)  # [P]; -inf when N is empty
    ordered = (min_positive > t) & (t > max_negative)  # [P]

    with_relations = num_positive > 0
    offset = relative_offsets(logits, labels, thresholds)[with_relations]
    defined = torch.isfinite(offset)
    offset_mean, offset_std = _mean_std(offset[defined])

    na = ~with_relations
    margin = (t - max_negative)[na].double()
    margin_mean, margin_std = _mean_std(margin[torch.isfinite(margin)])
    return {
        "positive_pairs": int(with_relations.sum()),
        "offset_mean": offset_mean,
        "offset_std": offset_std,
        "offset_undefined": int((~defined).sum()),
        "violation_rate": float((~ordered[with_relations]).double().mean()) if with_relations.any() else None,
        "na_pairs": int(na.sum()),
        "na_margin_mean": margin_mean,
        "na_margin_std": margin_std,
        "na_violation_rate": float((~ordered[na]).double().mean()) if na.any() else None,
    }


def diagnose(logits: torch.Tensor, labels: torch.Tensor, loss_fn, top_k: int) -> dict:
    """Error counts under the loss's own decode, and the threshold statistics."""
    decoded = loss_fn.decode(logits, top_k)
    scores, thresholds = relation_margins(loss_fn, logits)  # [P, C], [P]
    return error_counts(decoded, labels) | threshold_statistics(scores, labels, thresholds)


def diagnose_run(run_dir: str | Path, splits: tuple[str, ...] = SPLITS, plot_dir: str | Path | None = None) -> dict:
    """Diagnostics of every split whose logits the run saved.

    For each split: the counts and statistics of `diagnose`, and, where the run recorded the
    official scorer's counts (best.json for dev, results.json for test), those counts beside them
    (`scorer_false_positives`, `scorer_false_negatives`). They can differ only for relations within
    fp16 rounding of the threshold, since the files hold fp16 logits and the run decoded float32.
    With `plot_dir`, also writes margins-<split>.png there.

    Returns:
        {"loss": {...}, "decode": {...}, "top_k": k, "<split>": {...}, ...}
    """
    run_dir = Path(run_dir)
    cfg, loss_fn, decode_params = load_config_and_loss(run_dir)
    num_classes = len(read_json(run_dir / REL2ID)) if (run_dir / REL2ID).is_file() else None
    # the run's scorer counts: best.json for dev, results.json for test
    report = {"loss": dict(cfg.loss), "decode": decode_params, "top_k": cfg.eval.top_k}
    recorded = {"dev": _official_counts(run_dir / BEST_SCORES, None), "test": _official_counts(run_dir / RESULTS, "test")}
    for split in splits:
        path = run_dir / f"{split}_logits.safetensors"
        if not path.is_file():
            continue
        logits, labels, _ = load_logits(path, num_classes)
        report[split] = diagnose(logits, labels, loss_fn, cfg.eval.top_k) | recorded.get(split, {})
        if plot_dir is not None:
            scores, thresholds = relation_margins(loss_fn, logits)
            plot_margins(scores, labels, thresholds, Path(plot_dir) / f"margins-{split}.png", f"{run_dir.name} ({split})")
    if not any(split in report for split in splits):
        files = " or ".join(f"{s}_logits.safetensors" for s in splits)
        raise DocreError(f"{run_dir}: no {files} (train with eval.save_logits=true)")
    return report


def _official_counts(path: Path, key: str | None) -> dict:
    if not path.is_file():
        return {}
    scores = json.loads(path.read_text(encoding="utf-8"))
    scores = scores.get(key, {}) if key else scores
    if not {"num_predicted", "num_correct", "num_gold"} <= scores.keys():
        return {}
    return {"scorer_false_positives": scores["num_predicted"] - scores["num_correct"],
            "scorer_false_negatives": scores["num_gold"] - scores["num_correct"]}


# ----------------------------------------------------------------------------- plots
def margin_samples(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor,
                   limit: int = PLOT_SAMPLE) -> dict[str, torch.Tensor]:
    """The three distributions a margin plot shows: s_r - t for gold relations ("positive") and for
    the other relations ("negative", an evenly spaced sample of at most `limit`), and the TH
    offset of the pairs with gold relations ("offset", see `threshold_statistics`)."""
    gold = labels[:, 1:] > 0
    margins = logits[:, 1:].float() - thresholds.float()[:, None]  # [P, R]
    negative = margins[~gold]
    if len(negative) > limit:
        # integer spacing: float32 linspace rounds the last index up to len(negative) past ~16 M values
        negative = negative[torch.arange(limit, dtype=torch.int64) * (len(negative) - 1) // (limit - 1)]
    offset = relative_offsets(logits, labels, thresholds)
    return {"positive": _finite(margins[gold]), "negative": _finite(negative), "offset": _finite(offset)}


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values[torch.isfinite(values)]


def plot_margins(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor, path: Path, title: str) -> None:
    """PNG with two panels: positive and negative logit margins to the threshold (the threshold is
    the line at 0), and the distribution of the TH offset between negatives (0) and positives (1)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    samples = margin_samples(logits, labels, thresholds)
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    for name, color in (("negative", "tab:blue"), ("positive", "tab:orange")):
        values = samples[name].numpy()
        if len(values):
            left.hist(values, bins=80, density=True, alpha=0.55, color=color, label=f"{name} (n={len(values)})")
    left.axvline(0.0, color="black", linewidth=1, label="decision threshold")
    left.set(xlabel="relation logit - threshold", ylabel="density", title="margins to the threshold")
    left.legend(fontsize=8)
    offset = samples["offset"].clamp(-2.0, 3.0).numpy()
    if len(offset):
        right.hist(offset, bins=60, color="tab:green", alpha=0.8)
    for x, name in ((0.0, "mean negative"), (1.0, "mean positive")):
        right.axvline(x, color="black", linestyle="--", linewidth=1)
        right.text(x, 1.0, name, rotation=90, va="top", ha="right", fontsize=8, transform=right.get_xaxis_transform())
    _, std = _mean_std(samples["offset"])
    right.set(xlabel="TH offset (clipped to [-2, 3])", ylabel="pairs with relations",
              title="TH offset" + (f": std {std:.3f}" if std is not None else ""))
    figure.suptitle(title)
    _save_png(figure, path)


def plot_comparison(rows: list[dict], path: Path, title: str = "") -> None:
    """Bar chart comparing losses: F1 (%) in one panel, false positives and negatives in the other.

    Args:
        rows: dicts with "label", "f1" (fraction), "false_positives", "false_negatives", and
            optionally "f1_std", "fp_std", "fn_std" for error bars over seeds (None: one seed, no bar).
    """
    from matplotlib.figure import Figure

    labels = [row["label"] for row in rows]
    x = list(range(len(rows)))
    figure = Figure(figsize=(max(6.0, 1.1 * len(rows) + 3), 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.bar(x, [100 * row["f1"] for row in rows], yerr=[100 * (row.get("f1_std") or 0.0) for row in rows], color="tab:purple")
    for i, row in enumerate(rows):
        left.text(i, 100 * row["f1"], f"{100 * row['f1']:.1f}", ha="center", va="bottom", fontsize=8)
    left.set(ylabel="F1 (%)", title="F1")
    width = 0.4
    right.bar([i - width / 2 for i in x], [row["false_positives"] for row in rows], width,
              yerr=[row.get("fp_std") or 0.0 for row in rows], label="false positives", color="tab:red")
    right.bar([i + width / 2 for i in x], [row["false_negatives"] for row in rows], width,
              yerr=[row.get("fn_std") or 0.0 for row in rows], label="false negatives", color="tab:gray")
    right.set(ylabel="count", title="errors")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    if title:
        figure.suptitle(title)
    _save_png(figure, path)


def _save_png(figure, path: Path) -> None:
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
