"""Lazy mounts: an image's eStargz / zstd:chunked layers served through FUSE from their
verified TOCs, file contents fetched by Range as they are read.

::

    plan = lazy_plan(image, source)            # TOCs fetched and verified; or .fallback
    m = start_lazy(store, plan, state_dir, reopen=make_range_reader)
    m.lowers                                   # top layer first: overlay's lowerdir
    m.status(); m.failure()
    m.stop()                                   # idempotent: mount, server, fd
    LazyMount.attach(state_dir).stop()         # from another process

The parts: :mod:`.plan` (can it be lazy), :mod:`.tree` (TOC -> the mount's tree),
:mod:`.kernel` (/dev/fuse, mount(2), the EIO responder), :mod:`.ops` (the file system
operations), :mod:`.binding` (mfusepy), :mod:`.server` (the forked server process),
:mod:`.mount` (the owner's side), :mod:`.state` (state.json), :mod:`.cache` and
:mod:`.background` (the fetched bytes, prefetch, convergence), :mod:`.daemon`
(``mount --lazy`` / ``umount``).
"""

from __future__ import annotations

from .daemon import LazyMountResult, lazy_state_dir, mount_lazy, umount_lazy
from .mount import LazyMount, start_lazy
from .plan import NO_LAZY_LAYERS, NO_RANGE, LazyPlan, lazy_plan
from .state import COMPLETE, LAZY, PREFETCHED, LayerState

__all__ = [
    "COMPLETE",
    "LAZY",
    "NO_LAZY_LAYERS",
    "NO_RANGE",
    "PREFETCHED",
    "LayerState",
    "LazyMount",
    "LazyMountResult",
    "LazyPlan",
    "lazy_plan",
    "lazy_state_dir",
    "mount_lazy",
    "start_lazy",
    "umount_lazy",
]
