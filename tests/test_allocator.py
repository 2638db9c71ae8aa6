"""Every docre command asks torch for huge-page-backed large CPU blocks before torch is imported
(docre/allocator.py); a user's own setting wins; too late is reported, not pretended. The peak
memory a command reports is its own, not its parent's."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A command as the CLIs are built: run_cli(main), torch imported inside main. torch's THP path
# aligns a large block to the page size (4096) and marks it MADV_HUGEPAGE; its default path aligns
# to 64 bytes, and glibc's mmap'd chunks then start 64 bytes past a page boundary.
PROBE = """
import os, sys
from docre.errors import run_cli
def main():
    import torch
    print(os.environ.get("THP_MEM_ALLOC_ENABLE"), torch.empty(4 << 20).data_ptr() % 4096)
run_cli(main)
"""


def probe(env_value):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    value, offset = out.stdout.split()
    return value, int(offset)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's THP allocation path is Linux-only")
def test_commands_turn_huge_pages_on_before_torch_reads_the_setting():
    value, offset = probe(None)
    assert value == "1" and offset == 0  # torch took its THP path: page-aligned


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's THP allocation path is Linux-only")
def test_a_users_setting_wins():
    value, offset = probe("0")
    assert value == "0" and offset != 0  # torch's default 64-byte-aligned path


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401  (the test process has torch already; say so, do not pretend)

    from docre.allocator import use_huge_pages

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert use_huge_pages() is False
    import os

    assert "THP_MEM_ALLOC_ENABLE" not in os.environ


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork/exec accounting of peak memory is Linux's")
def test_peak_memory_of_a_command_started_from_a_large_process_is_its_own():
    held = b"\1" * (1 << 30)  # this process: over 1 GiB resident when the child is forked
    code = "from docre.utils import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert len(held) and 10 < float(out.stdout) < 900  # importing torch: a few hundred MiB, not the parent's GiB
