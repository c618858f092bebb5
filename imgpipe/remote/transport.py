"""The ``docker://`` transport: a registry repository as an ImageSource and ImageSink.

``RegistrySource`` resolves the reference and streams blobs (see
:class:`~imgpipe.remote.client.BlobReader`: seekable, resumes with Range). Manifests and
indexes come from ``manifests/<digest>``; what ``resolve`` had to GET is served from
memory rather than fetched twice.

``RegistrySink`` pushes: the pipeline's Export stage calls ``has_blob`` / ``mount_blob``
/ ``write_blob`` for every blob (from up to ``max_concurrent`` threads at once), then the
documents children first, then ``write_root``. Manifests and indexes are always PUT by
digest (they are small, and a re-push must be able to re-tag), and the root is PUT again
under the tag. Pushing to ``REPO@DIGEST`` checks that the image has that digest.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import BinaryIO, Final

from imgpipe.content.closing import Closing
from imgpipe.content.verify import VerifyingReader
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import FailedPrecondition, NotFound, ResourceLimit
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE
from imgpipe.formats.reference import Reference

from .client import (
    CHUNK_THRESHOLD,
    UPLOAD_CHUNK_SIZE,
    RegistryClient,
    Repository,
    as_binary,
)
from .options import TransportOptions

__all__ = ["DISTRIBUTION_SOURCE_PREFIX", "RegistrySink", "RegistrySource", "source_repos"]

#: containerd's label recording where a blob was pulled from:
#: ``containerd.io/distribution.source.<registry host>`` = ``repo[,repo...]``.
DISTRIBUTION_SOURCE_PREFIX: Final = "containerd.io/distribution.source."


def _is_document(desc: Descriptor) -> bool:
    return desc.media_type.is_index() or desc.media_type.is_manifest()


def source_repos(labels: Mapping[str, str], host: str) -> list[str]:
    """The repositories on ``host`` a blob is known to come from (its labels)."""
    value = labels.get(DISTRIBUTION_SOURCE_PREFIX + host, "")
    return [r for r in value.split(",") if r]


class _Connected(Closing):
    """A transport end over one RegistryClient: closing it closes its connections."""

    _client: RegistryClient

    def close(self) -> None:
        self._client.close()


class RegistrySource(_Connected):
    """Read an image from a registry. Use as a context manager (closes connections)."""

    def __init__(self, ref: Reference, *, options: TransportOptions | None = None) -> None:
        self.ref = ref
        self._client = RegistryClient(options)
        self._repo: Repository = self._client.repository(ref)

    def __repr__(self) -> str:
        return f"RegistrySource({str(self.ref)!r})"

    def resolve(self) -> Descriptor:
        """The root descriptor; see :meth:`Repository.resolve` for the errors. Fetched
        with its body (one GET, no HEAD first): every reader of a source reads the root
        next, and ``open_blob`` then serves it from memory."""
        return self._repo.resolve(fetch=True)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob's bytes, unverified: manifests whole, other blobs streamed."""
        if _is_document(desc):
            return self._repo.open_document(desc)
        return as_binary(self._repo.open_blob(desc))

    def open_range(self, desc: Descriptor, offset: int, length: int) -> BinaryIO:
        """Bytes ``[offset, offset + length)`` of a blob, unverified, by HTTP Range only
        (RangeNotSupported if the registry ignores it; see :func:`.ranges.open_range`)."""
        from .ranges import open_range  # noqa: PLC0415 (only lazy readers need it)

        return as_binary(open_range(self._repo, desc, offset, length))


class RegistrySink(_Connected):
    """Push an image to a registry repository. Use as a context manager.

    ``max_concurrent`` tells the Export stage how many blobs it may write at once
    (``options.max_concurrent``); every method is thread-safe. ``chunk_threshold`` and
    ``chunk_size`` choose between one PUT and PATCH chunks (see ``upload_blob``).
    """

    def __init__(
        self,
        ref: Reference,
        *,
        options: TransportOptions | None = None,
        chunk_threshold: int = CHUNK_THRESHOLD,
        chunk_size: int = UPLOAD_CHUNK_SIZE,
    ) -> None:
        self.ref = ref
        self.options = options or TransportOptions()
        self.max_concurrent = self.options.max_concurrent
        self.chunk_threshold = chunk_threshold
        self.chunk_size = chunk_size
        self._client = RegistryClient(self.options)
        self._repo = self._client.repository(ref, push=True)
        self._documents: dict[Digest, tuple[bytes, str]] = {}
        self._sessions: dict[Digest, str] = {}  # upload URLs a refused mount opened
        self._lock = threading.Lock()
        self.mounted: dict[Digest, str] = {}  # digest -> repository it was mounted from

    def __repr__(self) -> str:
        return f"RegistrySink({str(self.ref)!r})"

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the repository has the blob; documents always answer False (they are
        re-PUT: small, and the root's bytes are needed for the tag)."""
        if _is_document(desc):
            return False
        return self._repo.exists(desc)

    def mount_blob(self, desc: Descriptor, labels: Mapping[str, str]) -> str:
        """Mount ``desc`` from a repository its labels name on this registry.

        Returns the repository it was mounted from, or "" when no candidate worked (the
        caller then writes the blob). Failed mounts are not errors: the upload follows.
        """
        if _is_document(desc):
            return ""
        for repo in source_repos(labels, self.ref.domain):
            if repo == self._repo.name:
                continue
            location = self._repo.mount(desc, repo)
            if location is None:
                with self._lock:
                    self.mounted[desc.digest] = repo
                return repo
            with self._lock:
                self._sessions[desc.digest] = location  # reuse for the upload
            break  # the registry has said no; another candidate would likely say the same
        return ""

    def write_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Upload a blob, or PUT a manifest/index by digest (its bytes are checked
        against ``desc`` here, through the one verified read, and by the registry)."""
        if _is_document(desc):
            if desc.size > MAX_DOCUMENT_SIZE:
                raise ResourceLimit(f"{desc.digest}: documents over {MAX_DOCUMENT_SIZE} bytes")
            raw = VerifyingReader(stream, digest=desc.digest, size=desc.size).read()
            try:
                self._repo.put_manifest(str(desc.digest), raw, str(desc.media_type))
            except NotFound as e:
                if not desc.media_type.is_index():
                    raise
                # The registry checks that an index's manifests are there; they are not
                # when only some platforms were pulled (Export leaves the others out).
                raise FailedPrecondition(
                    f"{self.ref}: the registry refuses index {desc.digest}: it lists "
                    "manifests that are not in the store (only some platforms were "
                    "pulled); pull the image with --all-platforms to push all of it "
                    f"({e})"
                ) from None
            with self._lock:
                self._documents[desc.digest] = (raw, str(desc.media_type))
            return
        with self._lock:
            location = self._sessions.pop(desc.digest, None)
        self._repo.upload_blob(
            desc,
            stream,
            location=location,
            chunk_threshold=self.chunk_threshold,
            chunk_size=self.chunk_size,
        )

    def write_root(self, desc: Descriptor) -> None:
        """Tag the root (already pushed by digest); for a digest reference, check it."""
        self._repo.check_named(
            desc.digest, f"{self.ref}: the image is {desc.digest}, not the digest named"
        )
        if self.ref.digest is not None and not self.ref.tag:
            return  # by digest only: pushed already
        with self._lock:
            doc = self._documents.get(desc.digest)
        if doc is None:
            raise FailedPrecondition(f"{self.ref}: write the root document before tagging it")
        raw, media_type = doc
        self._repo.put_manifest(self.ref.tag, raw, media_type)
