#!/usr/bin/env bash
# The README's first command: set up .venv (scripts/setup.sh), train MiniLM on 200 Re-DocRED documents
# for 3 epochs (configs/quickstart.yaml, about 4 minutes on 2 CPU cores with the set-up), evaluate on dev
# and test, print the results table; the learning curve goes to runs/quickstart/curves.png.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python train.py configs/quickstart.yaml run_name=quickstart train.overwrite=true "$@"
cat <<'NEXT'

Next:
  runs/quickstart/curves.png              the learning curve (dev F1 and training loss per epoch)
  .venv/bin/python scripts/predict.py runs/quickstart 'data/redocred/test_revised.json.gz[:20]' -o page.html
                                          its predictions on 20 test documents as a page to read in a browser
  .venv/bin/python evaluate.py runs/quickstart --split test
                                          scores again, with intra/inter-sentence and per-relation tables
  .venv/bin/python train.py configs/redocred_mini/minilm_atgl.yaml
                                          the small real benchmark: 400 documents, 4 epochs, ~25 minutes
  .venv/bin/python scripts/reproduce.py models_redocred_mini --dry-run
                                          every model (ATLOP, DREEAM, DocuNet, KD-DocRE) with its loss vs ATGL
  .venv/bin/python -m pytest -q           the tests
NEXT
