"""Export a training run as a self-contained model folder (loads offline); --push-to-hub shares it on the Hub.

Usage: python scripts/export.py --help. The command lives in docre/cli/export.py; after the set-up it
is also the console command `docre-export`.
"""

if __name__ == "__main__":
    from docre.cli.export import run

    run()
