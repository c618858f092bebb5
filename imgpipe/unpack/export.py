"""Exporting an image's flattened rootfs into a plain directory: no snapshotter, no
mount, no root needed."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from imgpipe.decode import default_registry
from imgpipe.diff import WHITEOUT_DELETE, ApplyOptions
from imgpipe.errors import FailedPrecondition
from imgpipe.formats.platform import Platform
from imgpipe.pipeline import Observer, normalize_name
from imgpipe.store import Store

from .apply import Applier
from .result import LayerUnpack, Root, UnpackResult
from .snapshotters import opened
from .stages import lease_context, plan_of
from .target import as_platform, check_keys, load_keys, select_target


def export_rootfs(
    name: str,
    target: str | os.PathLike[str],
    *,
    platform: str | Platform | None = None,
    decrypt_keys: Sequence[str] = (),
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
) -> UnpackResult:
    """Write the image's flattened root filesystem into the directory ``target`` (made
    if missing; must be empty): every layer applied in order with plain whiteouts, no
    snapshotter, no mount, so it works without root. Without root, ownership is not
    applied and device nodes are skipped (the applier's warnings say which).

    FailedPrecondition if ``target`` is not empty; the errors of :func:`unpack` (a
    DiffID mismatch leaves a partial tree in ``target``).
    """
    tgt = Path(target)
    tgt.mkdir(parents=True, exist_ok=True)
    if any(tgt.iterdir()):
        raise FailedPrecondition(f"export target {tgt} is not empty")
    with opened(store, root) as s, lease_context(s, observer) as ctx:
        plan = plan_of(normalize_name(name), ctx)
        t = select_target(plan, s, as_platform(platform))
        keys = load_keys(decrypt_keys)
        check_keys(s, None, t, keys)
        applier = Applier(s, t, keys, default_registry())
        layers: list[LayerUnpack] = []
        for i in range(len(t.layers)):
            assert ctx.lease is not None
            ctx.lease.add_content(t.layers[i].digest)
            t0 = time.monotonic()
            applier.apply(i, tgt, ApplyOptions(whiteouts=WHITEOUT_DELETE))
            layers.append(
                LayerUnpack(
                    t.layers[i].digest, t.diff_ids[i], t.chains[i], False, time.monotonic() - t0
                )
            )
        return UnpackResult(t.image, "", t.chains[-1], tuple(layers))
