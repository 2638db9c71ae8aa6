"""The mean ± std table of any set of run directories (the same table reproduce.py writes).

Usage: python scripts/summarize_runs.py --help. The command lives in docre/cli/summarize_runs.py; after the set-up it
is also the console command `docre-summarize`.
"""

if __name__ == "__main__":
    from docre.cli.summarize_runs import run

    run()
