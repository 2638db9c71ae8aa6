"""Predict relations with a trained model (a run directory or a folder from scripts/export.py).

Usage: python scripts/predict.py --help. The command lives in docre/cli/predict.py; after the set-up it
is also the console command `docre-predict`.
"""

if __name__ == "__main__":
    from docre.cli.predict import run

    run()
