"""One blob of the store, as stored or decoded: what ``imgpipe content get`` writes.

Decoding runs the blob through the processor chain of its media type (decrypt,
decompress) to the tar stream it carries. The media type and the annotations (ocicrypt's
wrapped keys) come from the stored image that refers to the blob, unless the caller names
the media type.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO, Final

from imgpipe.errors import InvalidArgument, NotFound
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.mediatype import MediaType

if TYPE_CHECKING:
    from imgpipe.store import Store

__all__ = ["content_get", "find_descriptor"]

#: Bytes per copy: large enough that per-call overhead is noise, memory stays flat.
_COPY_SIZE: Final = 1 << 20


def content_get(
    digest: str | Digest,
    out: BinaryIO,
    *,
    decode: bool = False,
    media_type: str | None = None,
    decrypt_keys: Sequence[str] = (),
    root: str | os.PathLike[str] | None = None,
) -> None:
    """Write the blob ``digest`` to ``out``: its stored bytes, or with ``decode`` the
    tar stream its media type's processors make of it.

    ``media_type`` overrides the media type the stored images give the blob;
    ``decrypt_keys`` are ocicrypt private keys as ``FILE[:PASSWORD]``. Both need
    ``decode`` (InvalidArgument otherwise). Raises InvalidDigest, NotFound (no such blob,
    or no stored image names its media type), and what decoding raises (NoProcessor,
    Unauthorized for an encrypted layer without its key).
    """
    from imgpipe.decode import default_registry  # noqa: PLC0415 (start-up)
    from imgpipe.image import BlobLayer  # noqa: PLC0415
    from imgpipe.store import Store  # noqa: PLC0415

    if (media_type or decrypt_keys) and not decode:
        raise InvalidArgument("a media type and decryption keys need decode")
    dg = digest if isinstance(digest, Digest) else Digest.parse(digest)
    with Store(root) as store:
        if not decode:
            with store.content.open(dg) as f:
                shutil.copyfileobj(f, out, _COPY_SIZE)
            out.flush()
            return
        if media_type:
            try:  # the stored descriptor carries annotations (ocicrypt's wrapped keys)
                annotations = find_descriptor(store, dg).annotations
            except LookupError:
                annotations = {}
            size = store.content.info(dg).size
            desc = Descriptor(MediaType(media_type), dg, size, annotations=annotations)
        else:
            desc = find_descriptor(store, dg)
        keys = []
        if decrypt_keys:
            from imgpipe.processors.ocicrypt import load_private_key  # noqa: PLC0415

            keys = [load_private_key(spec) for spec in decrypt_keys]
        layer = BlobLayer(store.content, desc, registry=default_registry())
        with layer.open_uncompressed(keys=keys) as stream:
            shutil.copyfileobj(stream, out, _COPY_SIZE)
        out.flush()


def find_descriptor(store: Store, digest: Digest) -> Descriptor:
    """The descriptor (media type, annotations) that a stored image gives ``digest``.

    Walks the manifests of every named image (layers and configs). Raises NotFound when
    no stored image refers to the digest.
    """
    from imgpipe.pipeline import Context, LoadImage  # noqa: PLC0415 (start-up)

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
