"""Applying an image's layers into snapshots keyed by chain ID (see the package docstring):
reuse what is committed, else prepare, decode, apply, commit, in order."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

from imgpipe.decode import ReadAhead
from imgpipe.diff import WHITEOUT_DELETE, WHITEOUT_OVERLAY, ApplyOptions, ApplyResult, apply_layer
from imgpipe.errors import AlreadyExists, ImgpipeError, InvalidArgument, NotFound
from imgpipe.formats._record import Value
from imgpipe.formats.digest import Digest
from imgpipe.image import check_layer_keys
from imgpipe.image.keys import in_layer, layer_name
from imgpipe.metadata import Lease
from imgpipe.metadata.labels import LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED
from imgpipe.pipeline import BlobFetch, Event, Observer
from imgpipe.processors.streams import PassThrough
from imgpipe.snapshots import Mount, Snapshotter, direct_path, mount_all, unmount
from imgpipe.store import Store

from .result import (
    EVENT_LAYER_FAILED,
    EVENT_LAYER_UNPACKED,
    LABEL_SNAPSHOT_REF,
    LayerUnpack,
    UnpackResult,
)
from .target import Target, committed

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
    package docstring); the lock goes with the file descriptor."""
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


class _Checked(PassThrough):
    """Calls ``check()`` at each read: an apply running while blobs download stops at
    its next MiB when a download fails (a followed blob's reads stop at once anyway)."""

    def __init__(self, raw: BinaryIO, check: Callable[[], None]) -> None:
        super().__init__(raw)
        self._check = check

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._check()

    def _eof(self) -> None:
        self._check()


class Applier(Value):
    """Decode one layer blob and apply it into a snapshot (shared by all modes).

    With ``fetch`` (pull --unpack) the target's layers read their blobs through it
    (:meth:`BlobFetch.open_blob`: from the ingest while the blob downloads, else the
    stored blob); every read raises :class:`Aborted` once any download of the run has
    failed, and :meth:`wait_blob` says when a layer's blob is stored. (A plain class, not
    a dataclass: every unpack defines it.)
    """

    __slots__ = ("fetch", "keys", "store", "target")
    store: Store
    target: Target
    keys: Sequence[DecryptKey]
    fetch: BlobFetch | None

    def __init__(
        self,
        store: Store,
        target: Target,
        keys: Sequence[DecryptKey],
        fetch: BlobFetch | None = None,
    ) -> None:
        self.store, self.target, self.keys, self.fetch = store, target, keys, fetch

    @property
    def fetch_failed(self) -> bool:
        """True once a download of the overlapped fetch failed (or it was cancelled)."""
        f = self.fetch
        return f is not None and (f.failing or f.cancel_event.is_set())

    def _abort_if_failed(self) -> None:
        if self.fetch is not None and self.fetch.failing:
            raise Aborted

    def wait_blob(self, i: int) -> None:
        """With a fetch: block until layer ``i``'s blob is stored (verified), raising
        the fetch's first failure."""
        if self.fetch is not None:
            self.fetch.wait(self.target.layers[i].descriptor.digest)

    def followed(self, i: int) -> int:
        """Bytes of layer ``i``'s blob read before its commit verified them."""
        digest = self.target.layers[i].descriptor.digest
        return self.fetch.followed(digest) if self.fetch is not None else 0

    def apply(self, i: int, root: Path, options: ApplyOptions) -> ApplyResult:
        layer = self.target.layers[i]
        desc = layer.descriptor
        where = layer_name(i, len(self.target.layers), desc)
        moving = self.fetch is not None and self.fetch.fetches(desc.digest)
        if not moving and not self.store.content.exists(desc.digest):
            raise NotFound(f"{where}: blob not in the store (pull the image again)")
        try:
            raw = layer.open_uncompressed(keys=self.keys)
            if self.fetch is not None:
                raw = cast(BinaryIO, _Checked(raw, self._abort_if_failed))
            with ReadAhead(raw, depth=_PREFETCH_DEPTH, name="unpack-decode") as s:
                try:
                    return apply_layer(
                        root,
                        cast(BinaryIO, s),
                        options=options,
                        expected_diff_id=self.target.diff_ids[i],
                    )
                except BaseException:
                    if self.fetch is not None:
                        # the decode thread may wait in a followed blob for bytes still
                        # to come: wake it, so closing the stream does not wait for them
                        self.fetch.stop_following()
                    raise
        except Exception as e:
            if moving and self.fetch is not None and not self.fetch_failed:
                # What it failed on may be unverified bytes of a download still under
                # way (a flipped byte breaks a gzip stream long before the digest is
                # checked): if that download turns out bad, it is the cause.
                with contextlib.suppress(Exception):
                    self.fetch.wait(desc.digest)
            if self.fetch_failed:
                raise Aborted from e  # the download's failure is the cause
            if isinstance(e, ImgpipeError):
                raise in_layer(e, where) from e
            raise

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


def _apply_all(
    sn: Snapshotter, lease: Lease | None, applier: Applier, emit: Observer
) -> list[LayerUnpack]:
    """Apply the layers in order. With a fetch (pull --unpack), layer ``i`` is applied
    while its blob may still download, and waits for the blob to be stored (verified)
    after the apply and before its snapshot is committed; a reused layer waits for its
    blob before it is reported. A failure of either removes the active snapshot."""
    t = applier.target
    out: list[LayerUnpack] = []
    for i in range(len(t.layers)):
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
                        applier.apply_into(sn, key, mounts, i)  # DiffID checked
                        applier.wait_blob(i)  # and the blob verified, then the commit
                        _commit(sn, lease, chain, key)
                    except BaseException as e:
                        remove_quietly(sn, key)
                        if isinstance(e, ImgpipeError) and not applier.fetch_failed:
                            _layer_event(t, i, EVENT_LAYER_FAILED, str(e), emit)
                        raise
        if reused:
            applier.wait_blob(i)
        _prove_diff_id(applier.store, t, i)
        _layer_event(t, i, EVENT_LAYER_UNPACKED, "reused" if reused else "unpacked", emit)
        out.append(
            LayerUnpack(
                t.layers[i].descriptor.digest,
                t.diff_ids[i],
                t.chains[i],
                reused,
                time.monotonic() - t0,
                followed=applier.followed(i),
            )
        )
    return out


def _layer_event(t: Target, i: int, kind: str, detail: str, emit: Observer) -> None:
    desc = t.layers[i].descriptor
    emit(Event(kind, desc.digest, desc.media_type, desc.size, detail))


def _set_label(store: Store, digest: Digest, key: str, value: str) -> None:
    if store.db.content_labels(digest).get(key) != value:
        store.db.set_content_labels(digest, {key: value})


def _prove_diff_id(store: Store, t: Target, i: int) -> None:
    # the DiffID is now proven for this blob (applied and checked, or committed earlier)
    _set_label(store, t.layers[i].descriptor.digest, LABEL_UNCOMPRESSED, str(t.diff_ids[i]))


def unpack_target(
    store: Store,
    sn: Snapshotter,
    lease: Lease | None,
    target: Target,
    keys: Sequence[DecryptKey],
    *,
    emit: Observer,
    fetch: BlobFetch | None = None,
) -> UnpackResult:
    """Unpack ``target`` into ``sn``; with ``fetch`` (pull --unpack), whose blobs
    ``target``'s layers read, each layer follows its download and is committed once its
    blob is stored, and every apply stops (:class:`Aborted`) as soon as any download
    fails."""
    if not target.layers:
        raise InvalidArgument(f"image {target.image} has no layers to unpack")
    check_layer_keys(target.layers, keys)
    layers = _apply_all(sn, lease, Applier(store, target, keys, fetch), emit)
    top = target.chains[-1]
    _set_label(
        store, target.model.manifest.config.digest, f"{LABEL_GC_REF_SNAPSHOT}.{sn.name}", str(top)
    )
    return UnpackResult(target.image, sn.name, top, tuple(layers))
