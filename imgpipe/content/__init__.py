"""The content store: blobs kept exactly as served, addressed by digest, written through
resumable, locked ingests and committed only after their size and digest checked out.

``ContentStore`` is the store (``imgpipe.content.store``); ``VerifyingReader`` is the one
reader every outside byte passes through, opened by ``open_verified`` from any
``BlobReader`` (``imgpipe.content.verify``). The store's parts: ``layout`` (paths),
``locks`` (one writer per ingest), ``meta`` (an ingest's files), ``writer`` (``Writer``).
"""

from .layout import MAX_REF_LENGTH
from .locks import DEFAULT_LOCK_TIMEOUT
from .store import ContentStore, Info, IngestStatus, VerifyProblem
from .verify import CHUNK_SIZE, VerifyingReader, digest_stream
from .writer import Writer

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
