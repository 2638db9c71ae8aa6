"""Plain-text result tables for the command line and the docs."""

METRICS = (("precision", "P"), ("recall", "R"), ("f1", "F1"), ("ign_f1", "Ign F1"))


def results_table(results: dict) -> str:
    """A markdown table of the dev/test scores in a results dict (fractions shown as %)."""
    splits = [s for s in ("dev", "test") if results.get(s)]
    columns = [(key, name) for key, name in METRICS if any(key in results[s] for s in splits)]
    lines = ["| split | " + " | ".join(name for _, name in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for split in splits:
        cells = [f"{results[split][key] * 100:.2f}" if key in results[split] else "–" for key, _ in columns]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
