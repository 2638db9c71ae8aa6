"""Train a DocRE model from a config file.

Usage: python train.py --help. The command lives in docre/cli/train.py; after the set-up it
is also the console command `docre-train`.
"""

if __name__ == "__main__":
    from docre.cli.train import run

    run()
