"""The unpack verbs: :func:`unpack` (a stored image), :func:`pull_unpack` (pull
--unpack) and :func:`prepare_rootfs` (an active snapshot on the image, for run and
mount)."""

from __future__ import annotations

from collections.abc import Sequence

from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef, parse_transport
from imgpipe.metadata import ImageRecord
from imgpipe.pipeline import DEFAULT_MAX_CONCURRENT, Observer, Pipeline
from imgpipe.pipeline.context import Root, opened_store
from imgpipe.snapshots import Mount, Snapshotter
from imgpipe.store import Store
from imgpipe.transports import TransportOptions

from .result import DEFAULT_SNAPSHOTTER, UnpackResult
from .snapshotters import open_store_snapshotter
from .stages import FetchUnpack, FindImage, RecordUnpacked, Unpack, rootfs_stages
from .target import as_platform


def unpack(
    name: str,
    *,
    snapshotter: str | None = DEFAULT_SNAPSHOTTER,
    platform: str | Platform | None = None,
    decrypt_keys: Sequence[str] = (),
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
) -> UnpackResult:
    """Unpack the stored image ``name`` into ``snapshotter`` (default: overlay where it
    works, else native) and return the chain of snapshots. Layers already unpacked
    (by this image or another sharing them) are reused; calling it twice is cheap.

    ``platform`` picks a manifest of a multi-platform image (default: this host's).
    ``decrypt_keys`` are ``FILE[:PASSWORD]`` private keys for encrypted layers. Errors:
    see the module docstring; on any error no half-applied snapshot is committed.
    """
    stage = Unpack(snapshotter=snapshotter, platform=platform, decrypt_keys=decrypt_keys)
    with opened_store(store, root) as s:
        result: UnpackResult = Pipeline([FindImage(), stage]).run(name, store=s, observer=observer)
        return result


def pull_unpack(
    source: str | TransportRef,
    *,
    name: str | None = None,
    platform: str | Platform | None = None,
    all_platforms: bool = False,
    snapshotter: str | None = DEFAULT_SNAPSHOTTER,
    decrypt_keys: Sequence[str] = (),
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
) -> tuple[ImageRecord, UnpackResult]:
    """``imgpipe pull --unpack``: :func:`imgpipe.pull` and :func:`unpack` of the
    platform pulled (``platform``, default this host's) at once, in one pipeline run
    under one lease: layer *k* is applied while its blob downloads and committed once
    the blob is stored and verified (see :class:`FetchUnpack`).

    The image is recorded only when every blob is stored and the unpack succeeded; on
    any failure (a download, a missing key, a bad layer, Ctrl-C) nothing is recorded and
    the blobs this run fetched are removed again. Errors: those of both.
    """
    ref = source if isinstance(source, TransportRef) else parse_transport(source)
    plat = as_platform(platform)
    stage = FetchUnpack(
        snapshotter=snapshotter,
        platform=plat,
        decrypt_keys=decrypt_keys,
        max_concurrent=options.max_concurrent if options is not None else DEFAULT_MAX_CONCURRENT,
    )
    pipeline = (
        Pipeline.pull(name=name, platform=plat, all_platforms=all_platforms, options=options)
        .replace("fetch-blobs", stage)
        .replace("record", RecordUnpacked(name or ""))
    )
    with opened_store(store, root) as s:
        out: tuple[ImageRecord, UnpackResult] = pipeline.run(ref, store=s, observer=observer)
        return out


def prepare_rootfs(
    name: str,
    key: str,
    *,
    snapshotter: str | None = DEFAULT_SNAPSHOTTER,
    platform: str | Platform | None = None,
    read_only: bool = False,
    decrypt_keys: Sequence[str] = (),
    store: Store | None = None,
    root: Root = None,
    labels: dict[str, str] | None = None,
) -> tuple[Snapshotter, list[Mount]]:
    """Unpack ``name`` if needed, then create the active snapshot (``read_only``: a
    view) ``key`` on its top layer and return the snapshotter and the mounts that show
    it. What ``imgpipe run`` and :func:`mount` use; the caller mounts, and removes
    ``key`` when done (``sn.remove(key)``).

    The snapshot is labelled ``containerd.io/gc.root`` so garbage collection leaves it
    (and the layers under it) alone while it exists. AlreadyExists if ``key`` is taken;
    otherwise the errors of :func:`unpack`.
    """
    with opened_store(store, root) as s:
        sn = open_store_snapshotter(s, snapshotter)
        stages = rootfs_stages(
            sn,
            key,
            platform=platform,
            decrypt_keys=decrypt_keys,
            read_only=read_only,
            labels=labels,
        )
        mounts: list[Mount] = Pipeline(stages).run(name, store=s)
        return sn, mounts
