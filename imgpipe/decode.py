"""A stored blob through its decoder chain: decrypt, decompress, down to the tar stream.

::

    with Store(root) as store:
        desc = find_descriptor(store, digest)        # media type and annotations
        with open_decoded(store.content, desc, keys=[load_private_key("k.pem")]) as tar:
            for chunk in iter(lambda: tar.read(1 << 20), b""):
                ...

The registry is :func:`default_registry` unless one is given: the processors configured
in ``config.toml`` (:mod:`imgpipe.config`), then entry points, then the built-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, BinaryIO, Protocol

from imgpipe.config import load_processors
from imgpipe.errors import NotFound
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.processors import ProcessorParams, ProcessorRegistry, open_chain
from imgpipe.processors.registry import ChainStream

__all__ = ["BlobProvider", "default_registry", "find_descriptor", "open_decoded"]


class BlobProvider(Protocol):
    """What decoding needs of a store: open a committed blob (ContentStore has it)."""

    def open(self, digest: Digest) -> BinaryIO: ...


def default_registry() -> ProcessorRegistry:
    """Configured processors (config.toml), entry points, built-ins.

    Raises MalformedDocument for a broken config file.
    """
    return ProcessorRegistry(load_processors())


def open_decoded(
    store: BlobProvider | Any,
    desc: Descriptor,
    *,
    keys: Sequence[Any] = (),
    registry: ProcessorRegistry | None = None,
    params: ProcessorParams | None = None,
) -> ChainStream:
    """The blob ``desc`` names, decoded to the OCI tar stream. The caller closes it.

    ``store`` is a ContentStore (or a Store, whose ``content`` is used). ``keys`` are
    ocicrypt private keys (``load_private_key``), added to ``params``. Raises NotFound
    (no blob), NoProcessor (a media type nothing decodes), Unauthorized (encrypted, no
    key opens it); reading raises CorruptData, ResourceLimit, DigestMismatch.
    """
    provider = getattr(store, "content", store)
    reg = registry if registry is not None else default_registry()
    p = params if params is not None else ProcessorParams()
    if keys:
        p = replace(p, decrypt_keys=(*p.decrypt_keys, *keys))
    chain = reg.decoder_chain(desc.media_type)  # before opening: a miss leaks nothing
    raw = provider.open(desc.digest)
    return open_chain(raw, desc, chain, p)


def find_descriptor(store: Any, digest: Digest) -> Descriptor:
    """The descriptor (media type, annotations) that a stored image gives ``digest``.

    Walks the manifests of every named image (layers and configs). ``store`` is a Store.
    Raises NotFound when no stored image refers to the digest.
    """
    # the pipeline's stages will open layers through this module: import it late
    from imgpipe.pipeline import Context, LoadImage  # noqa: PLC0415

    ctx = Context(store)
    with ctx.resources:
        for rec in store.db.list_images():
            try:
                plan = LoadImage().run(rec.name, ctx)
            except NotFound:
                continue
            for desc in plan.blobs:
                if desc.digest == digest:
                    return desc
    raise NotFound(f"no stored image refers to {digest}; give its media type")
