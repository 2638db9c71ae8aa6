"""Score a trained run on a labelled split, rebuilding everything from the run directory.

Usage: python evaluate.py --help. The command lives in docre/cli/evaluate.py; after the set-up it
is also the console command `docre-evaluate`.
"""

if __name__ == "__main__":
    from docre.cli.evaluate import run

    run()
