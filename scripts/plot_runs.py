"""Plots of a set of run directories: learning curves and the result table as bars (PNG).

Usage: python scripts/plot_runs.py --help. The command lives in docre/cli/plot_runs.py; after the set-up it
is also the console command `docre-plot-runs`.
"""

if __name__ == "__main__":
    from docre.cli.plot_runs import run

    run()
