"""ocicrypt-compatible layer encryption: the format skopeo, podman, nerdctl and imgcrypt use.

An encrypted layer is the stored blob (gzip, zstd or plain tar bytes) run through
``AES_256_CTR_HMAC_SHA256``, with a ``+encrypted`` media type and two annotations on its
descriptor: the layer key wrapped as JWE for each recipient (``keys.jwe``) and the HMAC
(``pubopts``). See ``_spec`` for the exact documents and ``jwe`` for the JWE layout.

::

    key = load_private_key("key.pem:password")
    with DecryptingReader(blob, annotations=desc.annotations, keys=[key]) as r:
        ...  # plaintext; DigestMismatch at EOF if anything was tampered with

    enc = EncryptingReader(blob, recipients=[load_recipient("jwe:pub.pem")])
    ...  # read ciphertext to EOF, then
    desc_annotations.update(enc.annotations())

Errors (all from ``imgpipe.formats.errors``): NoDecryptionKey (an Unauthorized) when no
given key opens the layer; MalformedDocument for missing or broken annotations;
DigestMismatch when the HMAC (or, on request, the plaintext digest) does not match;
Unsupported for other ciphers and key schemes (pgp, pkcs7, pkcs11, key providers);
NotFound and InvalidArgument when loading keys.
"""

from __future__ import annotations

from ._spec import (
    ANNOTATION_KEYS_JWE,
    ANNOTATION_PREFIX,
    ANNOTATION_PUBOPTS,
    CIPHER_AES_256_CTR_HMAC_SHA256,
    NoDecryptionKey,
    PrivateOptions,
    PublicOptions,
    decrypted_media_type,
    encrypted_media_type,
    filter_annotations,
)
from .keys import DecryptKey, Recipient, load_private_key, load_recipient
from .streams import (
    CHUNK_SIZE,
    DecryptingReader,
    EncryptingReader,
    add_recipients,
    check_authorization,
    unwrap_private_options,
)

__all__ = [
    "ANNOTATION_KEYS_JWE",
    "ANNOTATION_PREFIX",
    "ANNOTATION_PUBOPTS",
    "CHUNK_SIZE",
    "CIPHER_AES_256_CTR_HMAC_SHA256",
    "DecryptKey",
    "DecryptingReader",
    "EncryptingReader",
    "NoDecryptionKey",
    "PrivateOptions",
    "PublicOptions",
    "Recipient",
    "add_recipients",
    "check_authorization",
    "decrypted_media_type",
    "encrypted_media_type",
    "filter_annotations",
    "load_private_key",
    "load_recipient",
    "unwrap_private_options",
]
