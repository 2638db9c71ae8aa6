"""Threshold diagnostics of a finished run (ATGL paper Fig. 2/3), from its saved logits.

Usage: python scripts/diagnose.py --help. The command lives in docre/cli/diagnose.py; after the set-up it
is also the console command `docre-diagnose`.
"""

if __name__ == "__main__":
    from docre.cli.diagnose import run

    run()
