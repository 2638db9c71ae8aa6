"""Plot ATGL alpha sweeps: dev/test F1, P and R against alpha (log axis), mean ± std over the runs.

    python scripts/plot_alpha.py RUN_DIR [RUN_DIR ...] [-o alpha_sweep.png] [--title TITLE]

Each RUN_DIR is a finished `loss.alpha=auto` run (it holds alpha_sweep.json); several runs, e.g.
seeds, give the mean with a band of one standard deviation.
"""

if __name__ == "__main__":
    from docre.cli.plot_alpha import run

    run()
