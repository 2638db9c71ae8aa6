"""Threshold diagnostics of a finished run (ATGL paper Fig. 2/3), from its saved logits.

    python scripts/diagnose.py RUN_DIR [--split dev|test|both] [--no-plots]

Reads RUN_DIR/{dev,test}_logits.safetensors, config.yaml and decode.json; prints false positives
and negatives under the loss's own decode, the TH offset (mean, std) and ordering-violation rate of
pairs with relations, and the NA pairs' margin and violation rate; writes RUN_DIR/diagnostics.json
and RUN_DIR/margins-<split>.png. Definitions: docs/losses.md.
"""

if __name__ == "__main__":
    from docre.cli.diagnose import run

    run()
