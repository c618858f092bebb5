"""Transports: where images are read from and written to.

``open_source(ref)`` and ``open_sink(ref)`` turn a parsed transport reference
(``imgpipe.formats.reference.parse_transport``) into an object implementing
``ImageSource`` / ``ImageSink`` (see ``imgpipe.transports.base``):

=================  ==============================  =========================================
transport          source                          sink
=================  ==============================  =========================================
oci:DIR[:TAG]      OCILayoutSource                 OCILayoutSink (created or added to)
oci-archive:F[:T]  OCIArchiveSource                OCIArchiveSink (F replaced on success)
docker-archive:F   DockerArchiveSource             Unsupported (not written yet)
docker://REF       RegistrySource                  RegistrySink (push by tag or digest)
=================  ==============================  =========================================

Both functions open at once, so a missing directory or a damaged archive is reported by
the call (NotFound, MalformedDocument, Unsupported) rather than on first use; the
registry transport reads its config files (``registries.toml``) then, and makes no
request before ``resolve`` / the first blob.

``options`` (:class:`TransportOptions`) says how to reach registries (plain HTTP, CA,
config and auth files, concurrency); the local transports ignore it. The registry
modules (urllib3) are imported only when a ``docker://`` reference is opened.

A sink that can do more than the :class:`ImageSink` protocol says so by implementing
:class:`ConcurrentSink`: the Export stage then writes up to ``max_concurrent`` blobs at
once and offers each blob's content labels to ``mount_blob`` first (the registry sink
mounts blobs from other repositories of the same registry instead of uploading them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidReference, Unsupported
from imgpipe.formats.reference import TransportRef

# Connection options live with the registry code (a cheap import: no urllib3).
from imgpipe.remote.options import TransportOptions

from .base import ImageSink, ImageSource

if TYPE_CHECKING:
    from .dockerarchive import DockerArchiveSource
    from .ociarchive import OCIArchiveSink, OCIArchiveSource
    from .ocilayout import OCILayoutSink, OCILayoutSource

# The local transports are imported when first named (PEP 562) or opened: a pull from a
# registry loads none of them (tarfile and the archive readers: ~4 ms of start-up).
_LAZY: Final = {
    "DockerArchiveSource": "dockerarchive",
    "OCIArchiveSink": "ociarchive",
    "OCIArchiveSource": "ociarchive",
    "OCILayoutSink": "ocilayout",
    "OCILayoutSource": "ocilayout",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "ConcurrentSink",
    "DockerArchiveSource",
    "ImageSink",
    "ImageSource",
    "OCIArchiveSink",
    "OCIArchiveSource",
    "OCILayoutSink",
    "OCILayoutSource",
    "TransportOptions",
    "open_sink",
    "open_source",
]


@runtime_checkable
class ConcurrentSink(ImageSink, Protocol):
    """A sink whose blob writes may run in parallel and which can mount blobs.

    ``max_concurrent``: blobs the Export stage may write at once (every method must then
    be thread-safe). ``mount_blob(desc, labels)``: make the blob present without its
    bytes, using what its content labels say about its origin; returns a description of
    where it came from, or "" when the blob must be written.
    """

    max_concurrent: int

    def mount_blob(self, desc: Descriptor, labels: Mapping[str, str]) -> str: ...


def _registry_source(ref: TransportRef, options: TransportOptions) -> ImageSource:
    # imported on first use: urllib3 is not needed by local transports (start-up time)
    from imgpipe.remote.transport import RegistrySource  # noqa: PLC0415

    assert ref.reference is not None  # TransportRef guarantees it for docker
    return RegistrySource(ref.reference, options=options)


def _registry_sink(ref: TransportRef, image_name: str, options: TransportOptions) -> ImageSink:
    from imgpipe.remote.transport import RegistrySink  # noqa: PLC0415

    assert ref.reference is not None
    return RegistrySink(ref.reference, options=options)


def _docker_archive_sink(
    ref: TransportRef, image_name: str, options: TransportOptions
) -> ImageSink:
    raise Unsupported(
        f"docker-archive:{ref.path}: writing docker-archive files is not supported yet; "
        "write an oci-archive: or oci: layout instead (docker load reads both)"
    )


def _archive_ref(ref: TransportRef) -> str:
    """The image a ``docker-archive:FILE:REF`` names, as text (empty if none)."""
    if ref.reference is not None:
        return str(ref.reference)
    return ref.tag


def _oci_source(ref: TransportRef, options: TransportOptions) -> ImageSource:
    from .ocilayout import OCILayoutSource  # noqa: PLC0415 (see _LAZY)

    return OCILayoutSource(ref.path, tag=ref.tag)


def _oci_archive_source(ref: TransportRef, options: TransportOptions) -> ImageSource:
    from .ociarchive import OCIArchiveSource  # noqa: PLC0415

    return OCIArchiveSource(ref.path, tag=ref.tag)


def _docker_archive_source(ref: TransportRef, options: TransportOptions) -> ImageSource:
    from .dockerarchive import DockerArchiveSource  # noqa: PLC0415

    return DockerArchiveSource(ref.path, ref=_archive_ref(ref))


def _oci_sink(ref: TransportRef, image_name: str, options: TransportOptions) -> ImageSink:
    from .ocilayout import OCILayoutSink  # noqa: PLC0415

    return OCILayoutSink(ref.path, tag=ref.tag, image_name=image_name)


def _oci_archive_sink(ref: TransportRef, image_name: str, options: TransportOptions) -> ImageSink:
    from .ociarchive import OCIArchiveSink  # noqa: PLC0415

    return OCIArchiveSink(ref.path, tag=ref.tag, image_name=image_name)


# One entry per transport: the registry transport slots in here.
_SOURCES: Final[dict[str, Callable[[TransportRef, TransportOptions], ImageSource]]] = {
    "oci": _oci_source,
    "oci-archive": _oci_archive_source,
    "docker-archive": _docker_archive_source,
    "docker": _registry_source,
}

_SINKS: Final[dict[str, Callable[[TransportRef, str, TransportOptions], ImageSink]]] = {
    "oci": _oci_sink,
    "oci-archive": _oci_archive_sink,
    "docker-archive": _docker_archive_sink,
    "docker": _registry_sink,
}


def open_source(ref: TransportRef, *, options: TransportOptions | None = None) -> ImageSource:
    """Open the image location ``ref`` names for reading; use the result with ``with``.

    Raises InvalidReference for an unknown transport, and whatever the transport raises
    on opening: NotFound for a missing directory or file (or an explicit registry config
    file), MalformedDocument for a damaged one, Unsupported for an unknown layout version.
    """
    opener = _SOURCES.get(ref.transport)
    if opener is None:
        raise InvalidReference(f"unknown transport {ref.transport!r}")
    return opener(ref, options or TransportOptions())


def open_sink(
    ref: TransportRef, *, image_name: str = "", options: TransportOptions | None = None
) -> ImageSink:
    """Open the location ``ref`` names for writing one image; use the result with ``with``.

    ``image_name`` (a full reference such as ``docker.io/library/busybox:latest``) is
    recorded where the format has room for it (``io.containerd.image.name`` in an OCI
    layout's ``index.json``). Raises InvalidReference for an unknown transport,
    Unsupported for docker-archive, and what the sink raises on opening (see
    OCILayoutSink, OCIArchiveSink, RegistrySink).
    """
    opener = _SINKS.get(ref.transport)
    if opener is None:
        raise InvalidReference(f"unknown transport {ref.transport!r}")
    return opener(ref, image_name, options or TransportOptions())
