"""What the container tests share: the CLI on a root, and what a container may leave
behind (mounts, runc state, active snapshots, its directory)."""

from __future__ import annotations

import json
import os
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE

from imgpipe.store import Store

#: Bound on waiting for a container to reach a state (no fixed sleeps).
WAIT_LIMIT = 30.0


def imgpipe(root: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run([IMGPIPE, "--root", root, *args], **kw)


# --- what a container may leave behind -------------------------------------------------


def mounts_under(root: Path) -> list[str]:
    prefix = os.path.realpath(root) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def runc_ids(root: Path) -> list[str]:
    if not (root / "runc").exists():
        return []
    out = subprocess.run(
        ["runc", "--root", root / "runc", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [c["id"] for c in json.loads(out or "null") or []]


def active_snapshots(root: Path) -> list[str]:
    with Store(root) as s:
        return [s.key for s in s.db.list_snapshots() if s.kind != "committed"]


def assert_clean(root: Path, name: str) -> None:
    assert not mounts_under(root / "tasks"), mounts_under(root)
    assert name not in runc_ids(root)
    assert name not in active_snapshots(root)
    assert not (root / "tasks" / name).exists()


READY = ["sh", "-c", "echo ready; exec sleep 1000"]


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """Block until the container says it runs (its first stdout line), at most WAIT_LIMIT.

    The line is written by the container's own process, so once it is read runc has
    started the container and imgpipe forwards signals to it.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT_LIMIT)
    if not ready:
        pytest.fail("timed out waiting for the container to run")
    assert proc.stdout.readline() == b"ready\n"
