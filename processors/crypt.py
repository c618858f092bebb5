"""ocicrypt as processors: the adapters between the registry and ``processors.ocicrypt``.

The cryptography lives in :mod:`imgpipe.processors.ocicrypt`; it is imported only when a
stream is opened, so resolving a chain never pays for loading ``cryptography``.

- :class:`Decrypt` (decoder): ``...+encrypted`` -> the same type without ``+encrypted``.
  It reads the wrapped keys from the descriptor's annotations and needs
  ``params.decrypt_keys``; without a key that opens the layer, ``open`` raises
  Unauthorized (NoDecryptionKey). A tampered layer fails with DigestMismatch at the
  end of the stream, before the last plaintext chunk is handed out.
- :class:`Encrypt` (encoder): any unencrypted layer type -> ``+encrypted``, for
  ``params.recipients``. After EOF its stream's ``annotations()`` hold
  ``org.opencontainers.image.enc.keys.jwe`` and ``...enc.pubopts`` for the new descriptor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.mediatype import MediaType

from .base import Direction, ProcessedStream, ProcessorParams

if TYPE_CHECKING:
    from .ocicrypt import DecryptingReader, EncryptingReader

__all__ = ["ENCRYPTED_SUFFIX", "Decrypt", "Encrypt"]

ENCRYPTED_SUFFIX: Final = "+encrypted"


class Decrypt:
    """Decoder: ``<layer type>+encrypted`` -> ``<layer type>``."""

    name = "ocicrypt-decrypt"
    direction: Direction = "decode"

    def accepts(self, media_type: MediaType) -> bool:
        return media_type.is_encrypted()

    def output_type(self, media_type: MediaType) -> MediaType:
        return MediaType(media_type.base.removesuffix(ENCRYPTED_SUFFIX))

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> DecryptingReader:
        from .ocicrypt import DecryptingReader  # noqa: PLC0415 (cryptography: on use)

        return DecryptingReader(stream, annotations=desc.annotations, keys=params.decrypt_keys)


class Encrypt:
    """Encoder: an unencrypted layer type -> ``<layer type>+encrypted``."""

    name = "ocicrypt-encrypt"
    direction: Direction = "encode"

    def accepts(self, media_type: MediaType) -> bool:
        return media_type.is_layer() and not media_type.is_encrypted()

    def output_type(self, media_type: MediaType) -> MediaType:
        return MediaType(media_type.base + ENCRYPTED_SUFFIX)

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> EncryptingReader:
        if not params.recipients:
            raise InvalidArgument(f"encrypting {desc.digest}: no recipients given")
        from .ocicrypt import EncryptingReader  # noqa: PLC0415 (cryptography: on use)

        # ocicrypt records the plaintext blob's digest in the private options. As the
        # first step of a chain this step reads the blob ``desc`` names (the caller
        # verifies it), so that digest is ``desc.digest`` and the plaintext need not be
        # hashed again (a second sha256 pass halves throughput). Later in a chain
        # (tar -> zstd -> encrypt) the input is another processor's output, a
        # ProcessedStream whose digest nobody knows yet: the reader hashes it.
        digest = None if isinstance(stream, ProcessedStream) else desc.digest
        return EncryptingReader(stream, recipients=params.recipients, digest=digest)
