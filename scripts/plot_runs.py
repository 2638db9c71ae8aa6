"""Plots of a set of run directories: learning curves and the result table as bars (PNG).

    python scripts/plot_runs.py RUNS_DIR [--table NAME] [-o DIR]

curves.png: dev F1 and training loss per epoch, the mean over the seeds of each row with a ± std
band. bars.png: dev F1, test F1 and test Ign F1 per row (mean, ± std error bars) with the published
number as a black mark. Rows are grouped as in summarize_runs.py. Files go to DIR (default RUNS_DIR).
"""

if __name__ == "__main__":
    from docre.cli.plot_runs import run

    run()
