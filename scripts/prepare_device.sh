#!/usr/bin/env bash
# Prepare .carry/ for a GPU machine that has python3, torch and transformers but no network (the
# device machines this project is lent): the wheels docre needs that such an image lacks
# (omegaconf, antlr4, ujson, for Python 3.12 on x86-64 Linux) and the embedded MiniLM encoder saved
# as float16 safetensors with its tokenizer and config (~45 MB; docre loads it with float32 master
# weights). Run once here after scripts/setup.sh; .carry/ is git-ignored. Then, on the GPU machine:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/wheels/*.whl && \
#   export PYTHONPATH=/tmp/site:$PWD && python3 scripts/gpu_check.py --backbone .carry/minilm --json
#
# and a real run: python3 train.py configs/redocred_mini/minilm_atgl.yaml model.backbone=.carry/minilm
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
mkdir -p .carry/wheels
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp "${platforms[@]}" -d .carry/wheels ujson
# pure-Python wheels (antlr4's runtime ships only as a source archive: build its wheel here)
.venv/bin/python -m pip wheel -q --no-deps -w .carry/wheels "omegaconf>=2.3" "antlr4-python3-runtime==4.9.*"
.venv/bin/python - <<'EOF'
import torch

from docre.models import load_tokenizer, resolve_backbone
from transformers import AutoModel

folder = ".carry/minilm"
source = resolve_backbone("minilm")
AutoModel.from_pretrained(source, use_safetensors=True).to(torch.float16).save_pretrained(folder)
load_tokenizer("minilm").save_pretrained(folder)
EOF
du -sh .carry/wheels .carry/minilm
