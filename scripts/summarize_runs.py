"""The mean ± std table of any set of run directories (the same table reproduce.py writes).

    python scripts/summarize_runs.py RUNS_DIR [--table NAME] [-o DIR]

Runs are the folders under RUNS_DIR with a config.yaml; finished ones (results.json) are counted,
grouped by their name without the -s<seed> suffix (prefixed by their folder when RUNS_DIR holds
several). The published numbers come from --table, else from the grid.json that reproduce.py
leaves in a table's folder. Prints the markdown table; -o DIR also writes DIR/table.md and
DIR/table.json.
"""

if __name__ == "__main__":
    from docre.cli.summarize_runs import run

    run()
