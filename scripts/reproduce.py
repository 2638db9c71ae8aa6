"""Run a result table over seeds and tabulate mean ± std next to the published numbers.

Usage: python scripts/reproduce.py --help. The command lives in docre/cli/reproduce.py; after the set-up it
is also the console command `docre-reproduce`.
"""

if __name__ == "__main__":
    from docre.cli.reproduce import run

    run()
