"""Fetch a dataset from its upstream location, verified, or say where to get it.

Usage: python scripts/download_data.py --help. The command lives in docre/cli/download_data.py; after the set-up it
is also the console command `docre-download-data`.
"""

if __name__ == "__main__":
    from docre.cli.download_data import run

    run()
