"""Score a trained run on a labelled split, rebuilding everything from the run directory.

    python evaluate.py RUN_DIR [--split dev|test] [--data FILE] [--top-k K]

The split's file comes from the run's config unless --data names another (a DocRED-format file,
or a slice such as data/redocred/dev_revised.json.gz[400:]). Splits without labels (DocRED test)
are refused: their scores come only from the CodaLab leaderboard (scripts/predict.py writes
result.zip).
"""

if __name__ == "__main__":
    from docre.cli.evaluate import run

    run()
