"""Plain-text result tables for the command line and the docs."""

METRICS = (("precision", "P"), ("recall", "R"), ("f1", "F1"), ("ign_f1", "Ign F1"),
           ("intra_f1", "Intra F1"), ("inter_f1", "Inter F1"))
EVIDENCE = (("evidence_precision", "Evi P"), ("evidence_recall", "Evi R"), ("evidence_f1", "Evi F1"))
# metric key -> its short label, for tables and figures (summary.py, plots.py)
LABELS = dict(METRICS + EVIDENCE)
SUBSETS = (("intra", "intra-sentence"), ("inter", "inter-sentence"), ("frequent", "frequent relations"),
           ("long_tail", "long-tail relations"))


def results_table(results: dict) -> str:
    """A markdown table of the dev/test scores in a results dict (fractions shown as %). Evidence
    P/R/F1 columns appear only when some split's predictions carry evidence. Rows: every entry
    holding scores ("dev", "test", "test + ISF", ...), in order."""
    splits = [s for s, value in results.items() if isinstance(value, dict) and "f1" in value]
    columns = [(key, name) for key, name in METRICS if any(key in results[s] for s in splits)]
    if any(results[s].get("num_evidence_predicted", 0) > 0 for s in splits):
        columns += [(key, name) for key, name in EVIDENCE if any(key in results[s] for s in splits)]
    lines = ["| split | " + " | ".join(name for _, name in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for split in splits:
        # – : not scored; also evidence scores of a split that predicted no evidence (None)
        cells = [f"{results[split][key] * 100:.2f}" if results[split].get(key) is not None else "–" for key, _ in columns]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(breakdowns: dict) -> str:
    """A markdown table of the intra/inter and frequent/long-tail scores of each split in
    `breakdowns` ({"dev": metrics.breakdown(...), "test": ...}); "" when there is nothing to show."""
    lines = ["| split | subset | P | R | F1 | gold | predicted |", "|---|---|---|---|---|---|---|"]
    for split, parts in breakdowns.items():
        for key, label in SUBSETS:
            if key in parts:
                s = parts[key]
                lines.append(f"| {split} | {label} | {s['precision'] * 100:.2f} | {s['recall'] * 100:.2f} | "
                             f"{s['f1'] * 100:.2f} | {s['num_gold']} | {s['num_predicted']} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def per_relation_table(per_relation: dict) -> str:
    """A markdown table with one row per relation (metrics.per_relation_scores), most gold facts first."""
    lines = ["| relation | name | gold | predicted | correct | P | R | F1 |", "|---|---|---|---|---|---|---|---|"]
    for relation, s in per_relation.items():
        lines.append(f"| {relation} | {s['name']} | {s['num_gold']} | {s['num_predicted']} | {s['num_correct']} | "
                     f"{s['precision'] * 100:.2f} | {s['recall'] * 100:.2f} | {s['f1'] * 100:.2f} |")
    return "\n".join(lines)
