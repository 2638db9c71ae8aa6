#!/usr/bin/env bash
# The README's first command: set up .venv (scripts/setup.sh), train MiniLM on Re-DocRED for one short
# epoch (configs/quickstart.yaml), evaluate on dev and test and print the results table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python train.py configs/quickstart.yaml train.overwrite=true "$@"
