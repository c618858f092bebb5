"""What one layer becomes, and the stream that makes it: media types and processor chains.

A layer type is four independent choices (:class:`LayerKind`): the family (OCI or
Docker), distributable or not, the compression (none, gzip, zstd) and whether it is
encrypted. A conversion changes compression and encryption; the family follows the
manifest (Docker manifests cannot name zstd or encrypted layers, so those force OCI, as
skopeo and imgcrypt do); non-distributability is kept.

:func:`open_converted` builds the stream for a :class:`LayerPlan` from the registry's
processors, in the only order that keeps DiffIDs valid::

    source blob (verified) -> [decrypt] -> [decompress -> DiffID tee -> compress] -> [encrypt]

A recompressed layer runs on three threads, each a few MiB ahead of the next (every
codec and hash releases the GIL): fetch, verify, decompress and the DiffID tee; the
encoder (zstd with workers of its own, processors.zstd); the caller's, which hashes the
output and sends it.

A seekable plan (eStargz, zstd:chunked: ``plan.seekable``) always decodes the layer and
writes it with :class:`~imgpipe.processors.estargz_write.EstargzEncoder` in place of the
compressor: the tee still checks the source's tar against the config, and the encoder
gives the new layer's DiffID (eStargz adds landmark and TOC entries) and annotations.

Each bracket runs only when the plan needs it: recompressing never decrypts a layer that
stays encrypted with the same key (it cannot: the key changes), and encrypting alone
never touches the compressed bytes, so the DiffID stays valid by construction. When the
layer is decompressed, the tee hashes the tar and compares it with the config's DiffID
*at EOF, inside the read*, so a destination that commits only after EOF never commits a
layer whose content is not what the config says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

from imgpipe.decode import ReadAhead
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import DigestMismatch
from imgpipe.formats.mediatype import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    LAYER_TYPES,
    OCI_LAYER,
    OCI_LAYER_NONDIST,
    Compression,
    MediaType,
)
from imgpipe.image import Layer
from imgpipe.processors import ProcessorParams, ProcessorRegistry, open_chain
from imgpipe.processors.estargz_params import EstargzParams
from imgpipe.processors.streams import PassThrough

if TYPE_CHECKING:
    from imgpipe.processors.estargz_write import EstargzEncoder

__all__ = [
    "ENCRYPTED_SUFFIX",
    "LayerKind",
    "LayerPlan",
    "Recording",
    "open_converted",
]

ENCRYPTED_SUFFIX: Final = "+encrypted"
#: Chunks a layer's first half may run ahead of its second (see imgpipe.decode.ReadAhead):
#: enough to ride out a stall of either side, little memory (a few MiB per layer in flight).
READ_AHEAD_DEPTH: Final = 4
#: The same behind the encoder: its output is smaller than the tar, 2 chunks suffice.
ENCODE_AHEAD_DEPTH: Final = 2


def _layer_type(family: str, nondistributable: bool, compression: Compression) -> MediaType:
    """The unencrypted layer type of these three choices (formats' LAYER_TYPES)."""
    if family == "oci":
        base = OCI_LAYER_NONDIST if nondistributable else OCI_LAYER
    else:
        base = DOCKER_FOREIGN_LAYER if nondistributable else DOCKER_LAYER
    out = base.compressed(compression) if compression else base
    # Docker has no non-distributable zstd type: needs_oci() keeps us from asking
    assert out is not None, (family, nondistributable, compression)
    return out


@dataclass(frozen=True, slots=True)
class LayerKind:
    """A layer media type taken apart; :meth:`media_type` puts it back together."""

    family: Literal["oci", "docker"]
    nondistributable: bool
    compression: Compression
    encrypted: bool

    @classmethod
    def parse(cls, media_type: str) -> LayerKind | None:
        """The kind of a known layer type, or None (a type we do not convert: wasm,
        in-toto, an unknown ``+suffix``: such layers pass through untouched)."""
        mt = MediaType(media_type)
        plain = MediaType(mt.base.removesuffix(ENCRYPTED_SUFFIX))
        if plain not in LAYER_TYPES:
            return None
        family: Literal["oci", "docker"] = "docker" if plain.is_docker() else "oci"
        return cls(family, plain.is_non_distributable(), plain.compression(), mt.is_encrypted())

    def needs_oci(self) -> bool:
        """Whether only an OCI manifest can carry this layer (zstd, encrypted)."""
        return self.compression == "zstd" or self.encrypted

    def media_type(self, *, oci: bool) -> MediaType:
        """The media type in an OCI (``oci=True``) or Docker manifest."""
        family = "oci" if oci or self.needs_oci() else "docker"
        base = _layer_type(family, self.nondistributable, self.compression)
        return MediaType(base + ENCRYPTED_SUFFIX) if self.encrypted else base


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """How one layer blob is turned into its converted form.

    ``decrypt``: remove the source's encryption first. ``recompress``: decode to the tar
    and encode as ``compression`` (hashing the tar against ``diff_id`` when given).
    ``encrypt``: encrypt the result for ``params.recipients``. None of the three: the
    bytes pass through unchanged (``passthrough``), only the media type may change.
    ``seekable``: with ``recompress``, write the layer as eStargz / zstd:chunked.
    """

    layer: Layer
    target_type: MediaType
    decrypt: bool = False
    recompress: bool = False
    compression: Compression = ""
    encrypt: bool = False
    diff_id: Digest | None = None
    seekable: EstargzParams | None = None

    @property
    def source(self) -> Descriptor:
        """The source layer's descriptor."""
        return self.layer.descriptor

    @property
    def passthrough(self) -> bool:
        return not (self.decrypt or self.recompress or self.encrypt)

    def cache_key(self, params: ProcessorParams) -> tuple[str, ...] | None:
        """What identifies the output bytes, for reuse across images; None when the output
        is not a function of the input (encryption draws a fresh key). zstd's bytes
        depend on whether it runs workers, not on how many (processors.zstd)."""
        if self.encrypt:
            return None
        level = {"gzip": params.gzip_level, "zstd": params.zstd_level}.get(self.compression, 0)
        if self.seekable is not None:
            return (str(self.source.digest), self.target_type.base, repr(self.seekable))
        key = (str(self.source.digest), self.target_type.base, str(level))
        if self.compression == "zstd":
            return (*key, "single-threaded" if params.zstd_threads == 0 else "workers")
        return key


class _DiffIDTee(PassThrough):
    """The decoded tar, hashed on the way; at EOF the DiffID is compared with ``expected``
    before EOF is reported (DigestMismatch; the ReadAhead over it keeps it raised)."""

    def __init__(self, inner: BinaryIO, expected: Digest | None, what: str) -> None:
        super().__init__(inner)
        self._expected = expected
        self._what = what
        self._digester = Digester(expected.algorithm if expected is not None else "sha256")
        self.diff_id: Digest | None = None

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._digester.update(chunk)

    def _eof(self) -> None:
        self.diff_id = self._digester.digest()
        if self._expected is not None and self.diff_id != self._expected:
            raise DigestMismatch(
                f"{self._what}: the uncompressed layer is {self.diff_id}, "
                f"the image config says {self._expected}",
                expected=str(self._expected),
                actual=str(self.diff_id),
            )


class Recording(PassThrough):
    """A read-only stream that remembers the first exception reading raised (``error``),
    so that an upload that failed can be blamed on its source when the source failed."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self.error: BaseException | None = None

    def readinto(self, buffer: Any) -> int:
        try:
            return super().readinto(buffer)
        except BaseException as e:
            self.error = self.error or e
            raise

    def read(self, size: int | None = -1) -> bytes:
        try:
            return super().read(size)
        except BaseException as e:
            self.error = self.error or e
            raise


class Converted(Recording):
    """The converted layer's bytes. After EOF: ``annotations()`` for its descriptor (the
    ocicrypt keys when encrypted, the TOC's when seekable) and ``diff_id`` when the layer
    was decoded: the new layer's (``source_diff_id`` is the tar read from the source).

    ``error`` is the first exception reading raised (a corrupt source, a failed DiffID
    check): the caller tells apart a destination that failed from a source that did.
    Closing closes the whole chain and the source stream.
    """

    def __init__(
        self,
        last: BinaryIO,
        encrypted: Any,
        tee: _DiffIDTee | None,
        seekable: EstargzEncoder | None = None,
    ) -> None:
        super().__init__(last)
        self._encrypted = encrypted
        self._tee = tee
        self._seekable = seekable

    @property
    def source_diff_id(self) -> Digest | None:
        return self._tee.diff_id if self._tee is not None else None

    @property
    def diff_id(self) -> Digest | None:
        if self._seekable is not None and self._seekable.diff_id:
            return Digest.parse(self._seekable.diff_id)
        return self.source_diff_id

    def annotations(self) -> dict[str, str]:
        # Encryption and the seekable formats add annotations (plain codecs add none).
        if self._seekable is not None:
            return self._seekable.annotations()
        return dict(self._encrypted.annotations()) if self._encrypted is not None else {}


def open_converted(
    source: BinaryIO,
    plan: LayerPlan,
    registry: ProcessorRegistry,
    params: ProcessorParams,
    *,
    what: str = "",
) -> Converted:
    """The converted bytes of ``plan.source`` read from ``source`` (verified by the caller).

    Owns ``source``. Raises NoProcessor for a type nothing decodes or encodes,
    Unauthorized (NoDecryptionKey) when decrypting without a key that opens the layer;
    reading raises what the processors raise (CorruptData, ResourceLimit,
    DigestMismatch for a tampered encrypted layer or a DiffID the config does not list).
    """
    what = what or f"layer {plan.source.digest}"
    desc = plan.source
    current: Any = source
    mt = desc.media_type
    encrypted: Any = None
    tee: _DiffIDTee | None = None
    seekable: EstargzEncoder | None = None
    try:
        if plan.decrypt:
            chain = [registry.find(mt, "decode")]
            current = open_chain(current, desc, chain, params)
            mt = current.media_type
        if plan.recompress:
            step_desc = desc if mt == desc.media_type else desc.replace(media_type=mt)
            current = open_chain(current, step_desc, registry.decoder_chain(mt), params)
            tee = _DiffIDTee(current, plan.diff_id, what)
            # fetch + verify + decompress + DiffID (one pass: the tee) on a thread of its own
            current, mt = (
                ReadAhead(tee, depth=READ_AHEAD_DEPTH, name="convert-read-ahead"),
                OCI_LAYER,
            )
            if plan.seekable is not None:
                # the writer, its tar reader and compressors: only for a seekable target
                from imgpipe.processors.estargz_write import EstargzEncoder  # noqa: PLC0415

                current = seekable = EstargzEncoder(current, plan.seekable)
                mt = plan.target_type
            elif plan.compression:
                goal = _layer_type("oci", False, plan.compression)
                step_desc = desc.replace(media_type=mt)
                current = open_chain(current, step_desc, registry.encoder_chain(mt, goal), params)
                mt = current.media_type
                # the encoder on a thread of its own too: decode | encode | [encrypt,]
                # hash and send, three threads (every codec and hash releases the GIL)
                current = ReadAhead(current, depth=ENCODE_AHEAD_DEPTH, name="convert-encode")
        if plan.encrypt:
            goal = MediaType(MediaType(mt).base + ENCRYPTED_SUFFIX)
            # The source descriptor itself when encryption reads the source blob: the
            # encryptor then records its (verified) digest instead of hashing again.
            step_desc = desc if current is source else desc.replace(media_type=mt)
            current = encrypted = open_chain(
                current, step_desc, registry.encoder_chain(mt, goal), params
            )
        if not plan.recompress:
            # decrypt or encrypt only: the output's hashing and sending on another core
            current = ReadAhead(current, depth=READ_AHEAD_DEPTH, name="convert-read-ahead")
    except BaseException:
        current.close()
        raise
    return Converted(current, encrypted, tee, seekable)
