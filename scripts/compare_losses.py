"""Train one config once per loss and seed, then tabulate scores, errors and threshold diagnostics.

Usage: python scripts/compare_losses.py --help. The command lives in docre/cli/compare_losses.py; after the set-up it
is also the console command `docre-compare-losses`.
"""

if __name__ == "__main__":
    from docre.cli.compare_losses import run

    run()
