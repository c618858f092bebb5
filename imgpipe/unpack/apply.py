"""Applying an image's layers into snapshots keyed by chain ID (see the package docstring):
reuse what is committed, else prepare, decode, apply, commit, in order."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

from imgpipe.decode import ReadAhead, default_registry, open_decoded
from imgpipe.diff import WHITEOUT_DELETE, WHITEOUT_OVERLAY, ApplyOptions, ApplyResult, apply_layer
from imgpipe.errors import AlreadyExists, ImgpipeError, InvalidArgument, NotFound
from imgpipe.formats.digest import Digest
from imgpipe.metadata import Lease
from imgpipe.metadata.labels import LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED
from imgpipe.pipeline import BlobFetch, Event, Observer
from imgpipe.processors import ProcessorRegistry
from imgpipe.snapshots import Mount, Snapshotter, direct_path, mount_all, unmount
from imgpipe.store import Store

from .result import (
    EVENT_LAYER_FAILED,
    EVENT_LAYER_UNPACKED,
    LABEL_SNAPSHOT_REF,
    LayerUnpack,
    UnpackResult,
)
from .target import Target, check_keys, committed, in_layer, layer_name

if TYPE_CHECKING:
    from imgpipe.processors.ocicrypt import DecryptKey

#: Lock buckets per snapshotter (a chain ID's first byte): bounded files, rare sharing.
_LOCK_DIR: Final = "unpack-locks"
#: Attempts at a unique extraction key, as containerd (a clash is practically impossible).
_PREPARE_ATTEMPTS: Final = 3
#: How many 1 MiB decoded chunks the decode thread may run ahead of the applier
#: (imgpipe.decode.ReadAhead): 8 MiB per layer at most.
_PREFETCH_DEPTH: Final = 8


@contextlib.contextmanager
def chain_lock(sn: Snapshotter, chain: Digest) -> Iterator[None]:
    """Serialise extractions of one chain ID across threads and processes (see the
    module docstring); the lock goes with the file descriptor."""
    d = Path(sn.root) / _LOCK_DIR
    d.mkdir(exist_ok=True, mode=0o700)
    fd = os.open(d / chain.hex[:2], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _extract_key(chain: Digest) -> str:
    # containerd's UnpackKeyFormat: "extract-<nanoseconds>-<random> <chainID>"
    return f"extract-{time.time_ns()}-{secrets.token_urlsafe(3)} {chain}"


class Aborted(Exception):
    """The apply was stopped because the fetch it overlaps failed; the stage raises the
    fetch's error instead (not an ImgpipeError, so no layer name is put in front)."""


class _Checked(io.RawIOBase):
    """Pass-through reader that calls ``check()`` before each read: an apply running
    while blobs download stops at its next MiB when a download fails."""

    def __init__(self, src: BinaryIO, check: Callable[[], None]) -> None:
        super().__init__()
        self._src = src
        self._check = check

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        return self._src.read(-1 if size is None else size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()


class Applier:
    """Decode one layer blob and apply it into a snapshot (shared by all modes).

    ``abort`` (pull --unpack) is called before each read of the blob and raises
    :class:`Aborted` when the overlapping fetch has failed.
    """

    def __init__(
        self,
        store: Store,
        target: Target,
        keys: list[DecryptKey],
        reg: ProcessorRegistry,
        abort: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.target = target
        self.keys = keys
        self.reg = reg
        self.abort = abort

    def apply(self, i: int, root: Path, options: ApplyOptions) -> ApplyResult:
        desc = self.target.layers[i]
        where = layer_name(i, len(self.target.layers), desc)
        if not self.store.content.exists(desc.digest):
            raise NotFound(f"{where}: blob not in the store (pull the image again)")
        try:
            raw = cast(
                BinaryIO, open_decoded(self.store.content, desc, keys=self.keys, registry=self.reg)
            )
            if self.abort is not None:
                raw = cast(BinaryIO, _Checked(raw, self.abort))
            with ReadAhead(raw, depth=_PREFETCH_DEPTH, name="unpack-decode") as s:
                return apply_layer(
                    root,
                    cast(BinaryIO, s),
                    options=options,
                    expected_diff_id=self.target.diff_ids[i],
                )
        except ImgpipeError as e:
            raise in_layer(e, where) from e

    def apply_into(self, sn: Snapshotter, key: str, mounts: list[Mount], i: int) -> None:
        upper = sn.upperdir(key)
        if upper is not None:
            # overlay: write the upper dir directly; the kernel reads these whiteouts
            opts = ApplyOptions(whiteouts=WHITEOUT_OVERLAY, lowers=tuple(sn.parent_dirs(key)))
            self.apply(i, upper, opts)
            return
        path = direct_path(mounts)
        if path is not None:
            self.apply(i, path, ApplyOptions(whiteouts=WHITEOUT_DELETE))
            return
        tmp = Path(tempfile.mkdtemp(prefix="apply-", dir=sn.root))
        try:
            mount_all(mounts, tmp)
            try:
                self.apply(i, tmp, ApplyOptions(whiteouts=WHITEOUT_DELETE))
            finally:
                unmount(tmp)
        finally:
            os.rmdir(tmp)


def remove_quietly(sn: Snapshotter, key: str) -> None:
    with contextlib.suppress(NotFound):
        sn.remove(key)


def _prepare_unique(
    sn: Snapshotter, lease: Lease | None, chain: Digest, parent: str
) -> tuple[str, list[Mount]]:
    for attempt in range(_PREPARE_ATTEMPTS):
        key = _extract_key(chain)
        if lease is not None:
            lease.add_snapshot(sn.name, key)  # before it exists: gc must not race it
        try:
            return key, sn.prepare(key, parent, labels={LABEL_SNAPSHOT_REF: str(chain)})
        except AlreadyExists:
            if attempt == _PREPARE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _commit(sn: Snapshotter, lease: Lease | None, chain: Digest, key: str, **kw: Any) -> None:
    """Commit ``key`` as ``chain``; if another unpack committed it first, drop ours."""
    if lease is not None:
        lease.add_snapshot(sn.name, str(chain))
    try:
        sn.commit(str(chain), key, **kw)
    except AlreadyExists:
        remove_quietly(sn, key)


def _unpack_sequential(
    sn: Snapshotter,
    lease: Lease | None,
    applier: Applier,
    emit: Observer,
    wait_blob: Callable[[int], None] | None = None,
) -> list[LayerUnpack]:
    """Apply the layers in order; ``wait_blob(i)`` (pull --unpack) blocks until layer
    ``i``'s blob is stored. It is called before anything is prepared, so a failed
    download leaves no active snapshot behind, and for reused layers too, so a layer is
    only reported once its blob is in."""
    t = applier.target
    out: list[LayerUnpack] = []
    for i in range(len(t.layers)):
        if wait_blob is not None:
            wait_blob(i)
        t0 = time.monotonic()
        chain = t.chains[i]
        parent = str(t.chains[i - 1]) if i else ""
        if lease is not None:
            lease.add_snapshot(sn.name, str(chain))  # first: then check it exists
        reused = committed(applier.store, sn.name, chain)
        if not reused:
            with chain_lock(sn, chain):
                # Another unpack may have committed it while we waited for the lock.
                reused = committed(applier.store, sn.name, chain)
                if not reused:
                    key, mounts = _prepare_unique(sn, lease, chain, parent)
                    try:
                        applier.apply_into(sn, key, mounts, i)
                        _commit(sn, lease, chain, key)
                    except BaseException as e:
                        remove_quietly(sn, key)
                        if isinstance(e, ImgpipeError):
                            _layer_failed(t, i, e, emit)
                        raise
        out.append(_layer_done(applier, i, reused, time.monotonic() - t0, emit))
    return out


def _layer_failed(t: Target, i: int, e: ImgpipeError, emit: Observer) -> None:
    desc = t.layers[i]
    emit(Event(EVENT_LAYER_FAILED, desc.digest, desc.media_type, desc.size, str(e)))


def _layer_done(
    applier: Applier, i: int, reused: bool, seconds: float, emit: Observer
) -> LayerUnpack:
    t = applier.target
    desc = t.layers[i]
    # the DiffID is now proven for this blob (applied and checked, or committed earlier)
    have = applier.store.db.content_labels(desc.digest).get(LABEL_UNCOMPRESSED)
    if have != str(t.diff_ids[i]):
        applier.store.db.set_content_labels(desc.digest, {LABEL_UNCOMPRESSED: str(t.diff_ids[i])})
    emit(
        Event(
            EVENT_LAYER_UNPACKED,
            desc.digest,
            desc.media_type,
            desc.size,
            "reused" if reused else "unpacked",
        )
    )
    return LayerUnpack(desc.digest, t.diff_ids[i], t.chains[i], reused, seconds)


def unpack_target(
    store: Store,
    sn: Snapshotter,
    lease: Lease | None,
    target: Target,
    keys: list[DecryptKey],
    *,
    emit: Observer,
    registry: ProcessorRegistry | None,
    fetch: BlobFetch | None = None,
) -> UnpackResult:
    """Unpack ``target``; with ``fetch`` (pull --unpack), each layer waits for its blob
    and every apply stops (:class:`Aborted`) as soon as any download fails."""
    if not target.layers:
        raise InvalidArgument(f"image {target.image} has no layers to unpack")
    check_keys(store, sn.name, target, keys)
    wait_blob: Callable[[int], None] | None = None
    abort: Callable[[], None] | None = None
    if fetch is not None:
        bf = fetch

        def _wait(i: int) -> None:
            bf.wait(target.layers[i].digest)

        def _abort() -> None:
            if bf.error is not None:
                raise Aborted

        wait_blob, abort = _wait, _abort
    applier = Applier(store, target, keys, registry or default_registry(), abort)
    layers = _unpack_sequential(sn, lease, applier, emit, wait_blob)
    top = target.chains[-1]
    label = f"{LABEL_GC_REF_SNAPSHOT}.{sn.name}"
    if store.db.content_labels(target.config_desc.digest).get(label) != str(top):
        store.db.set_content_labels(target.config_desc.digest, {label: str(top)})
    return UnpackResult(target.image, sn.name, top, tuple(layers))
