"""The content store: blobs kept exactly as served, addressed by digest, written through
resumable, locked ingests and committed only after their size and digest checked out.

``ContentStore`` is the store (``imgpipe.content.store``); ``VerifyingReader`` is the one
reader every outside byte passes through, opened by ``open_verified`` from any
``BlobReader`` (``imgpipe.content.verify``). The store's parts: ``layout`` (paths),
``locks`` (one writer per ingest), ``meta`` (an ingest's files), ``writer`` (``Writer``).
"""

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from .layout import MAX_REF_LENGTH
    from .locks import DEFAULT_LOCK_TIMEOUT
    from .store import ContentStore, Info, IngestStatus, VerifyProblem
    from .verify import CHUNK_SIZE, VerifyingReader, digest_stream
    from .writer import Writer

#: Public name -> its submodule, imported on first use: reading blobs does not load
#: the writer.
_WHERE = {
    "MAX_REF_LENGTH": "layout",
    "DEFAULT_LOCK_TIMEOUT": "locks",
    **dict.fromkeys(("ContentStore", "Info", "IngestStatus", "VerifyProblem"), "store"),
    **dict.fromkeys(("CHUNK_SIZE", "VerifyingReader", "digest_stream"), "verify"),
    "Writer": "writer",
}

__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LOCK_TIMEOUT",
    "MAX_REF_LENGTH",
    "ContentStore",
    "Info",
    "IngestStatus",
    "VerifyProblem",
    "VerifyingReader",
    "Writer",
    "digest_stream",
]
