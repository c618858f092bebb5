"""Stream processors keyed by media type: gzip, zstd, ocicrypt, external binaries.

Everything between a stored blob and a tar stream, and back, goes through here. A
:class:`Processor` turns a stream of one media type into a stream of another; a
:class:`ProcessorRegistry` chains them (``decoder_chain``: any layer type down to the OCI
tar; ``encoder_chain``: tar up to ``+zstd+encrypted``), and ``open_chain`` runs a chain.
Decoders are bounded (:class:`Limits`) and follow the bytes' magic rather than a wrong
media type, as containerd does.

This package imports only :mod:`imgpipe.formats` and third-party libraries; the codec
libraries (isal / zlib-ng, zstandard, cryptography) load when a stream is opened, and
the names here on first use (PEP 562): a pass-through stream does not load the codecs.
"""

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from .base import (
        CHUNK_SIZE,
        GZIP_LEVEL,
        ZSTD_LEVEL,
        ZSTD_THREADS,
        CorruptData,
        Direction,
        NoProcessor,
        ProcessedStream,
        Processor,
        ProcessorFailed,
        ProcessorParams,
    )
    from .external import ExternalProcessor, ExternalProcessorConfig
    from .limits import MAX_DECOMPRESSED_SIZE, MAX_RATIO, RATIO_FLOOR, Limits
    from .registry import (
        ENTRY_POINT_GROUP,
        MAX_CHAIN_LENGTH,
        ChainStream,
        ProcessorRegistry,
        builtin_processors,
        open_chain,
    )

#: Public name -> the module of this package that defines it.
_WHERE = {
    "CHUNK_SIZE": "base",
    "ChainStream": "registry",
    "CorruptData": "base",
    "Direction": "base",
    "ENTRY_POINT_GROUP": "registry",
    "ExternalProcessor": "external",
    "ExternalProcessorConfig": "external",
    "GZIP_LEVEL": "base",
    "Limits": "limits",
    "MAX_CHAIN_LENGTH": "registry",
    "MAX_DECOMPRESSED_SIZE": "limits",
    "MAX_RATIO": "limits",
    "NoProcessor": "base",
    "ProcessedStream": "base",
    "Processor": "base",
    "ProcessorFailed": "base",
    "ProcessorParams": "base",
    "ProcessorRegistry": "registry",
    "RATIO_FLOOR": "limits",
    "ZSTD_LEVEL": "base",
    "ZSTD_THREADS": "base",
    "builtin_processors": "registry",
    "open_chain": "registry",
}


__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "CHUNK_SIZE",
    "ENTRY_POINT_GROUP",
    "GZIP_LEVEL",
    "MAX_CHAIN_LENGTH",
    "MAX_DECOMPRESSED_SIZE",
    "MAX_RATIO",
    "RATIO_FLOOR",
    "ZSTD_LEVEL",
    "ZSTD_THREADS",
    "ChainStream",
    "CorruptData",
    "Direction",
    "ExternalProcessor",
    "ExternalProcessorConfig",
    "Limits",
    "NoProcessor",
    "ProcessedStream",
    "Processor",
    "ProcessorFailed",
    "ProcessorParams",
    "ProcessorRegistry",
    "builtin_processors",
    "open_chain",
]
