"""Every docre command that loads torch asks it for huge-page-backed large CPU blocks before torch
is imported (docre/allocator.py), as the first statement of its main(); a user's own setting wins;
too late is reported, not pretended. The peak memory a command reports is its own, not its
parent's, and can be lowered to what the process holds now (to read one phase's peak)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = sorted(path for path in (ROOT / "docre" / "cli").glob("*.py") if path.name != "__init__.py")
WITHOUT_TORCH = {"download_data"}  # commands that never import torch: no allocator setting to make

# The train command as its console entry point runs it: importing the command loads no torch; its
# main() (stopped here by the usage error, before any work) asks for huge pages; torch comes later.
# torch's THP path aligns a large block to the page size (4096) and marks it MADV_HUGEPAGE; its
# default path aligns to 64 bytes, and glibc's mmap'd chunks then start 64 bytes past a page boundary.
PROBE = """
import os, sys
import docre.cli.train as command
assert "torch" not in sys.modules
sys.argv = ["docre-train"]
try:
    command.main()
except SystemExit:
    pass
import torch
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), torch.empty(4 << 20).data_ptr() % 4096)
"""


def probe(env_value):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    value, offset = out.stdout.split()
    return value, int(offset)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's THP allocation path is Linux-only")
def test_the_train_command_turns_huge_pages_on_before_torch_reads_the_setting():
    value, offset = probe(None)
    assert value == "1" and offset == 0  # torch took its THP path: page-aligned


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's THP allocation path is Linux-only")
def test_a_users_setting_wins():
    value, offset = probe("0")
    assert value == "0" and offset != 0  # torch's default 64-byte-aligned path


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: path.stem)
def test_each_command_asks_for_huge_pages_first(path):
    """use_huge_pages() is the first statement of main(): nothing main() imports can load torch before it."""
    main = next(node for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef) and node.name == "main")
    first = main.body[1] if ast.get_docstring(main) else main.body[0]
    call = first.value if isinstance(first, ast.Expr) else None
    asks = isinstance(call, ast.Call) and getattr(call.func, "id", "") == "use_huge_pages"
    assert asks == (path.stem not in WITHOUT_TORCH)


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux's")
def test_the_peak_can_be_lowered_to_what_the_process_holds_now():
    code = ("from docre.utils import peak_rss_mb, reset_peak_rss\n"
            "held = b'\\1' * (300 << 20); del held\n"  # 300 MiB resident, then handed back
            "before = peak_rss_mb(); reset = reset_peak_rss(); print(before, peak_rss_mb(), reset)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    before, after, reset = out.stdout.split()
    assert reset == "True" and float(before) - float(after) > 250
