"""Streaming layer encryption and decryption with ``AES_256_CTR_HMAC_SHA256``.

The layer cipher (ocicrypt ``blockcipher_aes_ctr.go``): a random 32-byte key and a random
16-byte nonce used as the initial AES-CTR counter block; the ciphertext is as long as the
plaintext (the stored blob, compressed or not); HMAC-SHA256 keyed with the *same* 32-byte
key runs over the *ciphertext* (encrypt-then-MAC) and its tag goes into the public options.

Decryption withholds the plaintext of the most recent raw read until it knows more data
follows, and at EOF compares the HMAC (constant time) before releasing it. A tampered,
truncated or wrong-key stream therefore ends in DigestMismatch instead of a clean EOF, and
a consumer that only commits after EOF (the content store, the unpacker) never commits
it. ocicrypt holds back only 10 KiB; we hold back one read (``chunk_size``).

Throughput: AES-CTR runs at several GB/s with AES-NI; HMAC-SHA256 (~1.9 GB/s here) is the
cost, so the hot loop is one ``update`` of each per 1 MiB chunk and nothing else in Python.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from typing import BinaryIO, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imgpipe.formats import (
    Digest,
    Digester,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    MalformedDocument,
)
from imgpipe.processors.base import ChunkReader

from . import jwe
from ._spec import (
    ANNOTATION_KEYS_JWE,
    ANNOTATION_PUBOPTS,
    CIPHER_AES_256_CTR_HMAC_SHA256,
    NONCE_SIZE,
    SYMKEY_SIZE,
    NoDecryptionKey,
    PrivateOptions,
    PublicOptions,
    b64encode,
    jwe_entries,
    public_options,
)
from .keys import DecryptKey, Recipient

__all__ = [
    "CHUNK_SIZE",
    "DecryptingReader",
    "EncryptingReader",
    "add_recipients",
    "check_authorization",
    "unwrap_private_options",
]

# One raw read: large enough that per-call Python overhead vanishes next to the HMAC,
# small enough to keep memory flat (at most two chunks are alive per stream).
CHUNK_SIZE: Final = 1 << 20

# HMAC already authenticates the plaintext (its key travels only inside the JWE), and the
# consumer checks the blob digest on commit; hashing again here would halve throughput.
VERIFY_DIGEST: Final = False


def unwrap_private_options(
    annotations: Mapping[str, str], keys: Sequence[DecryptKey]
) -> PrivateOptions:
    """Open the layer's private options with the first key that unwraps any JWE entry.

    Raises NoDecryptionKey (no keys given, or none opens an entry), MalformedDocument (the
    annotation is missing, not base64, no entry is a JWE, or the options are unusable),
    Unsupported (keys wrapped only with schemes other than jwe).
    """
    entries = jwe_entries(annotations)
    if not keys:
        raise NoDecryptionKey("the layer is encrypted and no decryption key was given")
    tokens = []
    for entry in entries:
        try:
            tokens.append(jwe.parse(entry))
        except MalformedDocument:
            continue  # ocicrypt also moves on to the next entry
    if not tokens:
        raise MalformedDocument(f"no entry of {ANNOTATION_KEYS_JWE} is a JWE document")
    for token in tokens:
        for key in keys:
            raw = jwe.unwrap(token, key)
            if raw is not None:
                return PrivateOptions.parse(raw)
    names = ", ".join(k.source or k.kind for k in keys)
    raise NoDecryptionKey(
        f"none of the {len(keys)} decryption key(s) ({names}) opens the layer's "
        f"{len(tokens)} wrapped key(s)"
    )


def check_authorization(annotations: Mapping[str, str], *, keys: Sequence[DecryptKey]) -> None:
    """Raise NoDecryptionKey unless one of ``keys`` can decrypt the layer (imgcrypt's
    ``CheckAuthorization``: unwrap only, no layer bytes read)."""
    unwrap_private_options(annotations, keys)


def add_recipients(
    annotations: Mapping[str, str],
    *,
    keys: Sequence[DecryptKey],
    recipients: Sequence[Recipient],
) -> dict[str, str]:
    """Annotations that also let ``recipients`` decrypt the layer; layer bytes stay as they are.

    The private options are unwrapped with one of ``keys`` and wrapped, byte for byte, in
    one new JWE for all ``recipients``, appended to the keys annotation with a comma (what
    ocicrypt's ``EncryptLayer`` does for an already encrypted layer). Returns a new dict;
    other annotations are copied unchanged. Raises InvalidArgument (no recipients) and what
    ``unwrap_private_options`` raises.
    """
    if not recipients:
        raise InvalidArgument("no recipients to add")
    opts = unwrap_private_options(annotations, keys)
    public_options(annotations)  # refuse to extend a layer we could not decrypt ourselves
    out = dict(annotations)
    out[ANNOTATION_KEYS_JWE] = (
        annotations[ANNOTATION_KEYS_JWE] + "," + b64encode(jwe.wrap(opts.raw, recipients))
    )
    return out


def _ctr(key: bytes, nonce: bytes) -> Cipher[modes.CTR]:
    return Cipher(algorithms.AES(key), modes.CTR(nonce))


class _Reader(ChunkReader):
    """Shared plumbing: ``raw`` to read, closed with this reader when ``close_raw``."""

    def __init__(self, raw: BinaryIO, *, close_raw: bool) -> None:
        super().__init__()
        self._raw = raw
        self._close_raw = close_raw

    def _close_inner(self) -> None:
        if self._close_raw:
            self._raw.close()


class DecryptingReader(_Reader):
    """Plaintext of an ocicrypt-encrypted layer, read from its ciphertext stream ``raw``.

    Construction unwraps the layer key from ``annotations`` with the first of ``keys`` that
    opens a JWE entry: NoDecryptionKey if none does (or ``keys`` is empty),
    MalformedDocument if the annotations are missing or bad, Unsupported for another
    cipher or key scheme. ``read`` returns plaintext; the last chunk is released only once
    the HMAC over the whole ciphertext matched, otherwise DigestMismatch is raised (and
    raised again on every later read, so a failed stream never looks like a clean EOF).

    ``verify_digest=True`` also hashes the plaintext and compares it with the digest inside
    the private options before releasing the last chunk (``expected_digest``).
    ``close_raw`` (default True) closes ``raw`` with this reader.
    """

    def __init__(
        self,
        raw: BinaryIO,
        *,
        annotations: Mapping[str, str],
        keys: Sequence[DecryptKey],
        verify_digest: bool = VERIFY_DIGEST,
        chunk_size: int = CHUNK_SIZE,
        close_raw: bool = True,
    ) -> None:
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, not {chunk_size}")
        pub = public_options(annotations)
        priv = unwrap_private_options(annotations, keys)
        super().__init__(raw, close_raw=close_raw)
        self.expected_digest: Digest | None = priv.digest
        self._dec = _ctr(priv.symkey, priv.nonce).decryptor()
        self._mac = hmac.new(priv.symkey, digestmod="sha256")
        self._tag = pub.hmac
        self._chunk = chunk_size
        self._digester: Digester | None = None
        if verify_digest:
            if priv.digest is None:
                raise MalformedDocument("verify_digest: the private options carry no digest")
            self._digester = Digester(priv.digest.algorithm)
        self._held = b""  # plaintext of the last raw read, withheld until more data follows
        self._eof = False
        self._error: Exception | None = None

    def _next_chunk(self) -> bytes:
        """The next plaintext chunk: the previous raw read's, released once more data
        follows, or at the end once the stream verified."""
        while not self._eof:
            if self._error is not None:
                raise self._error
            ct = self._raw.read(self._chunk)
            if not ct:
                self._finish()
                self._eof = True
                last, self._held = self._held, b""
                return last
            self._mac.update(ct)
            pt = self._dec.update(ct)
            if self._digester is not None:
                self._digester.update(pt)
            released, self._held = self._held, pt
            if released:
                return released
        return b""

    def _finish(self) -> None:
        self._dec.finalize()
        if not hmac.compare_digest(self._mac.digest(), self._tag):
            self._error = DigestMismatch(
                "encrypted layer failed its HMAC check (tampered, truncated or wrong key)"
            )
            raise self._error
        if self._digester is not None and self.expected_digest is not None:
            actual = self._digester.digest()
            if actual != self.expected_digest:
                self._error = DigestMismatch(
                    f"decrypted layer is {actual}, its encryption options say "
                    f"{self.expected_digest}",
                    expected=str(self.expected_digest),
                    actual=str(actual),
                )
                raise self._error


class EncryptingReader(_Reader):
    """Ciphertext of the plaintext stream ``raw``, encrypted for ``recipients``.

    A fresh key and nonce are drawn per reader. After ``read`` returned ``b""``,
    ``annotations()`` gives the two annotations for the layer descriptor, in ocicrypt's
    format. ``digest`` is the plaintext blob's digest for the private options (ocicrypt
    uses the source descriptor's digest); without it the plaintext is hashed on the way.
    The ciphertext is as long as the plaintext. Raises InvalidArgument for no recipients.
    """

    def __init__(
        self,
        raw: BinaryIO,
        *,
        recipients: Sequence[Recipient],
        digest: Digest | None = None,
        chunk_size: int = CHUNK_SIZE,
        close_raw: bool = True,
    ) -> None:
        if not recipients:
            raise InvalidArgument("no recipients to encrypt the layer for")
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, not {chunk_size}")
        super().__init__(raw, close_raw=close_raw)
        self._recipients = list(recipients)
        self._symkey = os.urandom(SYMKEY_SIZE)
        self._nonce = os.urandom(NONCE_SIZE)
        self._enc = _ctr(self._symkey, self._nonce).encryptor()
        self._mac = hmac.new(self._symkey, digestmod="sha256")
        self._digest = digest
        self._digester = Digester() if digest is None else None
        self._chunk = chunk_size
        self._eof = False
        self._annotations: dict[str, str] | None = None
        self.size = 0  # bytes encrypted so far (= ciphertext length at EOF)

    def _next_chunk(self) -> bytes:
        if self._eof:
            return b""
        pt = self._raw.read(self._chunk)
        if not pt:
            self._enc.finalize()
            self._eof = True
            return b""
        if self._digester is not None:
            self._digester.update(pt)
        ct: bytes = self._enc.update(pt)
        self._mac.update(ct)
        self.size += len(ct)
        return ct

    def annotations(self) -> dict[str, str]:
        """The ``keys.jwe`` and ``pubopts`` annotations of the encrypted layer.

        FailedPrecondition before the stream reached EOF. The same dict (a copy) on every
        call: the JWE is made once.
        """
        if not self._eof:
            raise FailedPrecondition("annotations() before the layer was read to EOF")
        if self._annotations is None:
            digest = self._digest
            if digest is None:
                assert self._digester is not None
                digest = self._digester.digest()
            priv = PrivateOptions.new(self._symkey, self._nonce, digest)
            pub = PublicOptions(CIPHER_AES_256_CTR_HMAC_SHA256, self._mac.digest())
            self._annotations = {
                ANNOTATION_KEYS_JWE: b64encode(jwe.wrap(priv.raw, self._recipients)),
                ANNOTATION_PUBOPTS: b64encode(pub.to_json()),
            }
        return dict(self._annotations)

    def plaintext_digest(self) -> Digest:
        """The digest recorded in the private options (FailedPrecondition before EOF)."""
        if self._digest is not None:
            return self._digest
        if not self._eof or self._digester is None:
            raise FailedPrecondition("plaintext_digest() before the layer was read to EOF")
        return self._digester.digest()
