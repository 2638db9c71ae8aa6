"""Run a result table over seeds and tabulate mean ± std next to the published numbers.

    python scripts/reproduce.py TABLE [--seeds 66,67,68] [--dry-run] [--output-dir runs] [key=value ...]
    python scripts/reproduce.py CONFIG [CONFIG ...] --name NAME [--seeds ...] [key=value ...]

TABLE is a name in configs/tables/ (e.g. redocred_mini, atgl_table2_redocred_bert) or a table file;
CONFIG files become one row each. Every (row, seed) is one `python train.py` process writing
<output-dir>/<table>/<row>-s<seed>/: finished runs (results.json) are skipped, interrupted ones (a
last/ checkpoint) are resumed, runs stopped before their first checkpoint start again. A run
directory holding a run of another config is an error, never silently mixed in. key=value
overrides apply to every run (e.g. train.epochs=2). When the runs are done:
<output-dir>/<table>/table.md, table.json, curves.png and bars.png. Ctrl-C (or SIGTERM) stops the
current run at its next step with a checkpoint; the same command resumes the grid. --nproc N
trains each run with N data-parallel processes (torchrun).
"""

if __name__ == "__main__":
    from docre.cli.reproduce import run

    run()
