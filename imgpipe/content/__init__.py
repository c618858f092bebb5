"""The content store: blobs kept exactly as served, addressed by digest, written through
resumable, locked ingests and committed only after their size and digest checked out.

``ContentStore`` is the store (``imgpipe.content.store``); ``VerifyingReader`` is the one
reader every outside byte passes through (``imgpipe.content.verify``).
"""

from .store import (
    DEFAULT_LOCK_TIMEOUT,
    MAX_REF_LENGTH,
    ContentStore,
    Info,
    IngestStatus,
    VerifyProblem,
    Writer,
)
from .verify import CHUNK_SIZE, VerifyingReader, digest_stream

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
