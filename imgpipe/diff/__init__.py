"""Layers as file trees: apply a layer tar into a directory, compute one from two trees.

* :func:`apply_layer` (``imgpipe.diff.apply``): stream an uncompressed layer into a
  directory on directory fds, never writing outside it, with plain or overlay whiteouts,
  and return its DiffID.
* :func:`diff_trees` / :func:`diff_upperdir` (``imgpipe.diff.compute``): write a
  reproducible PAX layer tar from a lower and an upper tree (double walk), or from an
  overlay upperdir (fast path).
"""

from __future__ import annotations

from imgpipe.diff.apply import apply_layer
from imgpipe.diff.compute import DiffResult, diff_trees, diff_upperdir
from imgpipe.diff.options import (
    WHITEOUT_DELETE,
    WHITEOUT_OVERLAY,
    WHITEOUT_OVERLAY_USER,
    ApplyOptions,
    ApplyResult,
)

__all__ = [
    "WHITEOUT_DELETE",
    "WHITEOUT_OVERLAY",
    "WHITEOUT_OVERLAY_USER",
    "ApplyOptions",
    "ApplyResult",
    "DiffResult",
    "apply_layer",
    "diff_trees",
    "diff_upperdir",
]
