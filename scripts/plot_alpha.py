"""Plot ATGL alpha sweeps: dev/test F1, P and R against alpha (log axis), mean ± std over the runs.

Usage: python scripts/plot_alpha.py --help. The command lives in docre/cli/plot_alpha.py; after the set-up it
is also the console command `docre-plot-alpha`.
"""

if __name__ == "__main__":
    from docre.cli.plot_alpha import run

    run()
