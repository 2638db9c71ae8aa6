"""Effect of a dev-tuned TH offset on threshold-class losses, from runs' saved logits (no retraining).

Usage: python scripts/tune_offset.py --help. The command lives in docre/cli/tune_offset.py; after the set-up it
is also the console command `docre-tune-offset`.
"""

if __name__ == "__main__":
    from docre.cli.tune_offset import run

    run()
