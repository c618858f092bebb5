"""Exporting an image's flattened rootfs into a plain directory: no snapshotter, no
mount, no root needed. ``export_rootfs`` is ``Pipeline([FindImage(), ExportRootfs(dir)])``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imgpipe.decode import default_registry
from imgpipe.diff import WHITEOUT_DELETE, ApplyOptions
from imgpipe.errors import FailedPrecondition
from imgpipe.formats.platform import Platform
from imgpipe.image import check_layer_keys
from imgpipe.metadata import ImageRecord
from imgpipe.pipeline import Context, Observer, Pipeline
from imgpipe.pipeline.context import Root, opened_store
from imgpipe.store import Store

from .apply import Applier
from .result import LayerUnpack, UnpackResult
from .stages import FindImage
from .target import as_platform, load_keys, stored_target


@dataclass(frozen=True, kw_only=True)
class ExportRootfs:
    """A stored image -> its layers applied in order into the directory ``target``, with
    plain whiteouts (:class:`UnpackResult` with no snapshotter)."""

    name = "export-rootfs"
    target: Path
    platform: str | Platform | None = None
    decrypt_keys: Sequence[str] = ()

    def run(self, item: ImageRecord, ctx: Context) -> UnpackResult:
        t = stored_target(
            ctx.store, item, as_platform(self.platform), default_registry(), ctx.protect
        )
        keys = load_keys(self.decrypt_keys)
        check_layer_keys(t.layers, keys)
        applier = Applier(ctx.store, t, keys)
        layers: list[LayerUnpack] = []
        for i, layer in enumerate(t.layers):
            digest = layer.descriptor.digest
            ctx.protect(digest)
            t0 = time.monotonic()
            applier.apply(i, self.target, ApplyOptions(whiteouts=WHITEOUT_DELETE))
            seconds = time.monotonic() - t0
            layers.append(LayerUnpack(digest, t.diff_ids[i], t.chains[i], False, seconds))
        return UnpackResult(t.image, "", t.chains[-1], tuple(layers))


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
    stage = ExportRootfs(target=tgt, platform=platform, decrypt_keys=decrypt_keys)
    with opened_store(store, root) as s:
        result: UnpackResult = Pipeline([FindImage(), stage]).run(name, store=s, observer=observer)
        return result
