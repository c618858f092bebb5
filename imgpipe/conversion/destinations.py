"""Where a conversion writes to: the store, a registry, a layout or an archive.

Every destination knows two ways to take a blob:

* ``copy_blob(desc, stream)``: the digest is known (a layer passed through, a config);
  the destination is asked first whether it has it (``has_blob``) or can mount it from
  another repository of the same registry (``mount_blob``);
* ``write_converted(stream)``: the digest is known only at the end. The registry
  streams it (one PATCH with chunked encoding, then ``PUT ?digest=``: nothing touches
  the disk), the store writes an ingest and commits under the digest it computed, a
  layout or archive spools it to a temporary file first (its sink API wants the digest
  up front).

Documents (``write_document``) and the root (``write_root``) come last, children first,
so a destination never names an image before every blob it reaches is there. A stage
between may read a written blob back (``open_blob``: the store and a registry can).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    DigestMismatch,
    FailedPrecondition,
    ImgpipeError,
    IntegrityError,
    NotFound,
    ResourceLimit,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from imgpipe.formats.reference import Reference
from imgpipe.metadata.labels import LABEL_UNCOMPRESSED
from imgpipe.transports import ImageSink

from .layers import Recording

if TYPE_CHECKING:
    from imgpipe.pipeline import Context
    from imgpipe.remote.client import Repository

__all__ = [
    "COPY_CHUNK_SIZE",
    "Destination",
    "PushRejected",
    "RegistryDestination",
    "SinkDestination",
    "StoreDestination",
]

#: Bytes per read when copying or spooling: the processors' and content store's size.
COPY_CHUNK_SIZE: Final = 1 << 20


class PushRejected(Unavailable):
    """The destination registry refused or failed the push (a 5xx, a refused manifest,
    a dropped connection while uploading). Exit code 13, as Unavailable."""


class Destination(Protocol):
    """Where the converted image goes; blob methods may run in parallel."""

    name: str

    def has_blob(self, desc: Descriptor) -> bool: ...

    def mount_blob(self, desc: Descriptor, source: tuple[str, str] | None) -> str: ...

    def copy_blob(self, desc: Descriptor, stream: BinaryIO) -> None: ...

    def write_converted(self, stream: BinaryIO, media_type: str) -> tuple[Digest, int]: ...

    def open_blob(self, desc: Descriptor) -> BinaryIO: ...

    def label_layer(self, digest: Digest, diff_id: Digest) -> None: ...

    def write_document(self, desc: Descriptor, raw: bytes, labels: Mapping[str, str]) -> None: ...

    def write_root(self, desc: Descriptor) -> None: ...

    def finish(self, ok: bool) -> None: ...


class StoreDestination:
    """The local store of the pipeline's context: blobs into the content store under
    the run's lease, documents labelled for garbage collection, and the name recorded
    last. What this conversion commits goes into the run's ``created``, which the
    pipeline takes back if the run fails.
    """

    def __init__(self, ctx: Context, name: str) -> None:
        self.store = ctx.store
        self.name = name
        self._ctx = ctx
        self._lock = threading.Lock()
        self._diff_ids: dict[Digest, Digest] = {}

    def _created(self, digest: Digest) -> None:
        with self._lock:
            self._ctx.created.append(digest)

    def has_blob(self, desc: Descriptor) -> bool:
        if self.store.content.exists(desc.digest):
            self._ctx.protect(desc.digest)
            return True
        return False

    def mount_blob(self, desc: Descriptor, source: tuple[str, str] | None) -> str:
        return ""

    def copy_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        self._ctx.protect(desc.digest)
        with stream:
            if self.store.content.ingest(
                f"convert-{desc.digest}", stream, digest=desc.digest, size=desc.size
            ):
                self._created(desc.digest)

    def write_converted(self, stream: BinaryIO, media_type: str) -> tuple[Digest, int]:
        # A fresh ingest ref per conversion: the digest is not known to share one.
        ref = f"convert-{os.urandom(12).hex()}"
        size = 0
        with self.store.content.writer(ref) as w:
            while chunk := stream.read(COPY_CHUNK_SIZE):
                w.write(chunk)
                size += len(chunk)
            digest = w.digest()
            self._ctx.protect(digest)  # before the blob appears: gc never sees it bare
            w.commit(size, digest)
            if w.committed_new:
                self._created(digest)
        return digest, size

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.store.content.open_blob(desc)

    def label_layer(self, digest: Digest, diff_id: Digest) -> None:
        with self._lock:
            self._diff_ids[digest] = diff_id

    def write_document(self, desc: Descriptor, raw: bytes, labels: Mapping[str, str]) -> None:
        # Labels first: the moment the document exists, gc sees what it holds.
        self.store.db.set_content_labels(desc.digest, dict(labels))
        self.copy_blob(desc, io.BytesIO(raw))

    def write_root(self, desc: Descriptor) -> None:
        for digest, diff_id in self._diff_ids.items():
            self.store.db.set_content_labels(digest, {LABEL_UNCOMPRESSED: str(diff_id)})
        self.store.db.put_image(self.name, desc)

    def finish(self, ok: bool) -> None:
        pass  # the pipeline rolls back ``created`` once the lease is released


class _Spool:
    """A temporary file that hashes what is written; bounded by one layer per job."""

    def __init__(self, directory: str | None) -> None:
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by owner
        self.digester = Digester()
        self.size = 0

    def fill(self, stream: BinaryIO) -> None:
        while chunk := stream.read(COPY_CHUNK_SIZE):
            self.digester.update(chunk)
            self.file.write(chunk)
            self.size += len(chunk)
        self.file.flush()
        self.file.seek(0)


class SinkDestination:
    """An OCI layout or oci-archive (an ImageSink). Writes are serialised (sinks are not
    promised to be thread-safe); converted blobs are spooled to ``spool_dir`` first."""

    def __init__(self, sink: ImageSink, name: str, *, spool_dir: str | None = None) -> None:
        self._sink = sink
        self.name = name
        self._spool_dir = spool_dir
        self._lock = threading.Lock()

    def has_blob(self, desc: Descriptor) -> bool:
        with self._lock:
            return self._sink.has_blob(desc)

    def mount_blob(self, desc: Descriptor, source: tuple[str, str] | None) -> str:
        return ""

    def copy_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        with stream, self._lock:
            self._sink.write_blob(desc, stream)

    def write_converted(self, stream: BinaryIO, media_type: str) -> tuple[Digest, int]:
        spool = _Spool(self._spool_dir)
        with spool.file:
            spool.fill(stream)
            digest = spool.digester.digest()
            desc = Descriptor(media_type=media_type, digest=digest, size=spool.size)  # type: ignore[arg-type]
            with self._lock:
                self._sink.write_blob(desc, spool.file)
        return digest, spool.size

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        raise Unsupported(f"{self.name}: a layout or archive being written is not read back")

    def label_layer(self, digest: Digest, diff_id: Digest) -> None:
        pass

    def write_document(self, desc: Descriptor, raw: bytes, labels: Mapping[str, str]) -> None:
        with self._lock:
            self._sink.write_blob(desc, io.BytesIO(raw))

    def write_root(self, desc: Descriptor) -> None:
        with self._lock:
            self._sink.write_root(desc)

    def finish(self, ok: bool) -> None:
        if ok:
            self._sink.__exit__(None, None, None)
        else:
            err = FailedPrecondition("conversion failed")
            self._sink.__exit__(type(err), err, None)


def _rejected(name: str, e: ImgpipeError) -> ImgpipeError:
    """A destination registry's error as the CLI should see it: auth failures and bad
    content keep their class; anything else the registry did is PushRejected."""
    if isinstance(e, Unauthorized | IntegrityError | PushRejected):
        return e
    if isinstance(e, Unavailable | FailedPrecondition | NotFound | Unsupported | ResourceLimit):
        return PushRejected(f"{name}: the destination refused the push: {e}")
    return e


@contextlib.contextmanager
def _pushing(name: str, producer: Any = None) -> Iterator[None]:
    """Turn registry errors into PushRejected, unless the producer of the bytes failed:
    then that, the real cause, is raised, whatever the HTTP layer made of it."""
    try:
        yield
    except Exception as e:
        cause = getattr(producer, "error", None)
        if cause is not None and cause is not e:
            raise cause from None
        if cause is None and isinstance(e, ImgpipeError):
            raise _rejected(name, e) from e
        raise


class RegistryDestination:
    """A registry repository (push scope), through a (possibly shared) RegistryClient."""

    def __init__(self, repo: Repository, ref: Reference, name: str) -> None:
        self._repo = repo
        self.ref = ref
        self.name = name
        self._documents: dict[Digest, tuple[bytes, str]] = {}
        self._sessions: dict[Digest, str] = {}
        self._lock = threading.Lock()

    def has_blob(self, desc: Descriptor) -> bool:
        with _pushing(self.name):
            return self._repo.exists(desc)

    def mount_blob(self, desc: Descriptor, source: tuple[str, str] | None) -> str:
        if source is None or source[0] != self.ref.domain or source[1] == self._repo.name:
            return ""
        with _pushing(self.name):
            location = self._repo.mount(desc, source[1])
        if location is None:
            return source[1]
        with self._lock:
            self._sessions[desc.digest] = location  # the refused mount opened a session
        return ""

    def copy_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        with self._lock:
            location = self._sessions.pop(desc.digest, None)
        body = Recording(stream)
        with body, _pushing(self.name, body):
            self._repo.upload_blob(desc, body, location=location)  # type: ignore[arg-type]

    def write_converted(self, stream: BinaryIO, media_type: str) -> tuple[Digest, int]:
        with _pushing(self.name, stream):
            return self._repo.upload_stream(stream)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        from imgpipe.remote.client import as_binary  # noqa: PLC0415 (urllib3: on use)

        return as_binary(self._repo.open_blob(desc))

    def label_layer(self, digest: Digest, diff_id: Digest) -> None:
        pass

    def write_document(self, desc: Descriptor, raw: bytes, labels: Mapping[str, str]) -> None:
        with _pushing(self.name):
            self._repo.put_manifest(str(desc.digest), raw, str(desc.media_type))
        with self._lock:
            self._documents[desc.digest] = (raw, str(desc.media_type))

    def write_root(self, desc: Descriptor) -> None:
        if self.ref.digest is not None:
            if desc.digest != self.ref.digest:
                raise DigestMismatch(
                    f"{self.name}: the converted image is {desc.digest}, not the digest named",
                    expected=str(self.ref.digest),
                    actual=str(desc.digest),
                )
            if not self.ref.tag:
                return
        raw, media_type = self._documents[desc.digest]
        with _pushing(self.name):
            self._repo.put_manifest(self.ref.tag, raw, media_type)

    def finish(self, ok: bool) -> None:
        pass
