"""Huge pages for torch's large CPU blocks: the allocator setting every docre command that loads
torch makes, as the first statement of its `main()` (docre/cli/).

A training or evaluation step frees its large activations (attention maps, group-bilinear
features) and allocates them again at the next batch. On 4 KB pages every fresh block is
page-faulted in again, a third of a CPU step on the development VM; keeping freed blocks in the
heap instead (glibc's mmap threshold raised, docre's earlier setting) fragments it, and a
Re-DocRED-mini run peaked at 4.7 GB. torch can align large blocks to 2 MB and ask for
transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`): 512 times fewer page faults, while freed
blocks still go back to the OS. Measured in docs/performance.md.

torch reads the variable once, at its first allocation, so this must run before torch is
imported; a value the user set wins. Without kernel THP support (or off Linux) it changes nothing.
"""

import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 unless the user set it; returns whether it is on for this process."""
    if "torch" in sys.modules:  # too late: torch has read it already (or will never read it again)
        return False
    os.environ.setdefault(VARIABLE, "1")
    return os.environ[VARIABLE] == "1"
