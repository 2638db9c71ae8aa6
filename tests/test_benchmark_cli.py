"""scripts/benchmark.py's refusals: one line naming the option as the user typed it."""

import os
import subprocess
import sys

from tests.cli import ROOT


def test_cuda_missing_names_the_device_option():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever this machine has
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--device", "cuda", "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --device cuda, but CUDA is not available here (use cpu or auto)"]
