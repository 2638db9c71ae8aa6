"""Validate a dataset file with the reader training uses and print its statistics.

Usage: python scripts/check_data.py --help. The command lives in docre/cli/check_data.py; after the set-up it
is also the console command `docre-check-data`.
"""

if __name__ == "__main__":
    from docre.cli.check_data import run

    run()
