"""What a conversion changes: :class:`ConvertOptions`, checked once when built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.platform import Platform
from imgpipe.processors import GZIP_LEVEL, ZSTD_LEVEL, ZSTD_THREADS, ProcessorParams
from imgpipe.processors.estargz_params import (
    DEFAULT_CHUNK_SIZE,
    ESTARGZ_GZIP_LEVEL,
    FORMATS,
    EstargzParams,
)

__all__ = ["COMPRESSIONS", "DEFAULT_JOBS", "SEEKABLE_FORMATS", "ConvertOptions"]

#: Layers converted at once. Compression is CPU-bound and releases the GIL (zlib-ng,
#: zstd, hashing, AES), so about one per core plus one waiting on the network.
DEFAULT_JOBS: Final = 3
#: The compressions a conversion can ask for; "none" writes uncompressed tars.
COMPRESSIONS: Final = ("gzip", "zstd", "none")
#: The seekable layer formats (processors.estargz_write): eStargz (gzip) and zstd:chunked.
SEEKABLE_FORMATS: Final = FORMATS


@dataclass(frozen=True)
class ConvertOptions:
    """What to change. The defaults change nothing (a copy that verifies every blob).

    ``compression``: "gzip", "zstd", "none" (uncompressed) or None (keep each layer's).
    ``level``: for the compression asked (gzip 0-9, default GZIP_LEVEL; zstd up to 22,
    default ZSTD_LEVEL). ``zstd_threads``: zstd workers per layer (-1, the default: one per
    CPU; the bytes are the same for any count >= 1; 0: single-threaded, other bytes).
    ``oci``: Docker media types become OCI. ``recipients``: encrypt for these
    (``"jwe:PUB.pem"`` strings or loaded Recipients); ``encrypt_layers``: the layer
    indexes to encrypt (negative counts from the top; None = all). ``decrypt_keys``:
    ``"FILE[:PASSWORD]"`` strings or loaded DecryptKeys. ``platforms``: keep only these
    manifests of an index (empty = all). ``jobs``: layers converted at once.
    ``seekable``: "estargz" or "zstdchunked" rewrites every layer in that format (the
    compression follows: gzip, zstd; ``level`` is the zstd level of zstd:chunked), with
    ``chunk_size`` bytes per chunk, ``estargz_level`` (gzip, default 9) and
    ``prioritized`` paths first (eStargz only, ctr-remote's ``--estargz-record-in``);
    manifests become OCI (only OCI descriptors carry the layers' annotations).
    ``annotations``: added to the destination's root document when it is an OCI manifest
    or index (Docker documents have no annotations); ``imgpipe sync`` records the source
    digest and the options' fingerprint there, so a re-run can skip the image.
    Raises InvalidArgument for values out of range; NotFound / InvalidArgument when a
    key file is missing or unreadable.
    """

    compression: str | None = None
    level: int | None = None
    zstd_threads: int = ZSTD_THREADS
    oci: bool = False
    recipients: Sequence[Any] = ()
    encrypt_layers: Sequence[int] | None = None
    decrypt_keys: Sequence[Any] = ()
    platforms: Sequence[Platform | str] = ()
    jobs: int = DEFAULT_JOBS
    seekable: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    estargz_level: int | None = None
    prioritized: Sequence[str] = ()
    annotations: Mapping[str, str] | Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        self._check_seekable()
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise InvalidArgument(
                f"compression {self.compression!r}: want one of {', '.join(COMPRESSIONS)}"
            )
        if (
            self.level is not None
            and self.compression not in ("gzip", "zstd")
            and self.seekable != "zstdchunked"
        ):
            raise InvalidArgument("a compression level needs gzip or zstd compression")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise InvalidArgument(f"jobs must be an integer of at least 1, not {self.jobs!r}")
        if self.encrypt_layers is not None and not self.recipients:
            raise InvalidArgument("encrypt_layers needs recipients to encrypt for")
        set_ = object.__setattr__
        set_(self, "platforms", tuple(_platform(p) for p in self.platforms))
        set_(self, "prioritized", tuple(self.prioritized))
        set_(self, "recipients", tuple(_recipient(r) for r in self.recipients))
        set_(self, "decrypt_keys", tuple(_key(k) for k in self.decrypt_keys))
        # sorted pairs: hashable, and the same annotations always write the same bytes
        pairs = (
            self.annotations.items() if isinstance(self.annotations, Mapping) else self.annotations
        )
        set_(self, "annotations", tuple(sorted((str(k), str(v)) for k, v in pairs)))
        if self.encrypt_layers is not None:
            set_(self, "encrypt_layers", tuple(int(i) for i in self.encrypt_layers))
        self.params()  # level and thread checks, once, here

    def _check_seekable(self) -> None:
        if self.seekable is None:
            if self.estargz_level is not None or self.prioritized:
                raise InvalidArgument("eStargz options need the estargz format")
            if self.chunk_size != DEFAULT_CHUNK_SIZE:
                raise InvalidArgument("a chunk size needs the estargz or zstdchunked format")
            return
        if self.seekable not in SEEKABLE_FORMATS:
            raise InvalidArgument(
                f"format {self.seekable!r}: want one of {', '.join(SEEKABLE_FORMATS)}"
            )
        if self.compression is not None:
            raise InvalidArgument(f"{self.seekable} sets the compression: do not ask for one")
        if self.recipients:
            raise InvalidArgument(f"{self.seekable} layers cannot be encrypted (the TOC would be)")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int):
            raise InvalidArgument(f"chunk size {self.chunk_size!r}: want a number of bytes")
        if self.chunk_size < 1:
            raise InvalidArgument(f"chunk size {self.chunk_size}: must be at least 1 byte")
        if self.seekable != "estargz" and (self.estargz_level is not None or self.prioritized):
            raise InvalidArgument("an eStargz level and prioritized files need estargz")
        if self.estargz_level is not None and not 0 <= self.estargz_level <= 9:
            raise InvalidArgument(f"eStargz gzip level {self.estargz_level}: must be 0-9")

    def seekable_params(self) -> EstargzParams | None:
        """The writer's parameters when ``seekable`` is set, else None."""
        if self.seekable is None:
            return None
        return EstargzParams(
            format=self.seekable,  # type: ignore[arg-type]
            chunk_size=self.chunk_size,
            gzip_level=self.estargz_level if self.estargz_level is not None else ESTARGZ_GZIP_LEVEL,
            zstd_level=self.level if self.level is not None else ZSTD_LEVEL,
            prioritized=tuple(self.prioritized),
        )

    def params(self) -> ProcessorParams:
        """The processor parameters these options mean."""
        return ProcessorParams(
            decrypt_keys=self.decrypt_keys,
            recipients=self.recipients,
            gzip_level=self.level
            if self.level is not None and self.compression == "gzip"
            else GZIP_LEVEL,
            zstd_level=self.level
            if self.level is not None and self.compression == "zstd"
            else ZSTD_LEVEL,
            zstd_threads=self.zstd_threads,
        )


def _platform(p: Platform | str) -> Platform:
    return Platform.parse(p) if isinstance(p, str) else p


def _recipient(r: Any) -> Any:
    if not isinstance(r, str):
        return r
    from imgpipe.processors.ocicrypt import load_recipient  # noqa: PLC0415 (cryptography)

    return load_recipient(r)


def _key(k: Any) -> Any:
    if not isinstance(k, str):
        return k
    from imgpipe.processors.ocicrypt import load_private_key  # noqa: PLC0415 (cryptography)

    return load_private_key(k)
