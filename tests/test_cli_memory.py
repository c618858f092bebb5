"""cli/memory.py: the converting verbs' allocator setting takes effect."""

from __future__ import annotations

import subprocess
import sys


def test_return_big_buffers_sets_glibcs_mmap_threshold() -> None:
    # in a child: the setting is process-wide, and a test process keeps its own
    code = (
        "from imgpipe.cli.memory import return_big_buffers\n"
        "assert return_big_buffers() is True\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
