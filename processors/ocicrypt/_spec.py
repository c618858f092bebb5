"""The ocicrypt wire format: annotation names, media types, and the two options documents.

ocicrypt (containers/ocicrypt, used by skopeo, podman, nerdctl and containerd's imgcrypt) is
the de-facto specification; the OCI image spec never merged an encryption section. What is
fixed here was read from its ``blockcipher`` and ``encryption.go`` and checked against the
bytes skopeo writes:

- The layer descriptor carries ``org.opencontainers.image.enc.keys.<scheme>``: a
  comma-separated list of standard-base64 blobs, each a wrapped copy of the *private*
  options document; and ``org.opencontainers.image.enc.pubopts``: standard base64 of the
  *public* options document.
- Private options (Go ``json.Marshal`` of ``PrivateLayerBlockCipherOptions``; ``[]byte`` is
  standard padded base64)::

      {"symkey":"<32 bytes>","digest":"sha256:<plain blob>","cipheroptions":{"nonce":"<16 bytes>"}}

- Public options::

      {"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"<32 bytes>","cipheroptions":{}}

Security decision: the nonce is read from the private options only. Older ocicrypt code
looks cipher options up in the public document first; a nonce taken from there would be
unauthenticated, and since the HMAC covers the ciphertext only, a changed nonce would
decrypt to garbage that still passes the HMAC.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from imgpipe.formats import (
    Digest,
    InvalidArgument,
    InvalidDigest,
    MalformedDocument,
    Unauthorized,
    Unsupported,
)
from imgpipe.formats.mediatype import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    MediaType,
)

ANNOTATION_PREFIX: Final = "org.opencontainers.image.enc."
ANNOTATION_KEYS_PREFIX: Final = "org.opencontainers.image.enc.keys."
ANNOTATION_KEYS_JWE: Final = "org.opencontainers.image.enc.keys.jwe"
ANNOTATION_PUBOPTS: Final = "org.opencontainers.image.enc.pubopts"

CIPHER_AES_256_CTR_HMAC_SHA256: Final = "AES_256_CTR_HMAC_SHA256"
SYMKEY_SIZE: Final = 32  # ocicrypt accepts only AES-256
NONCE_SIZE: Final = 16  # one AES block: the initial CTR counter block
HMAC_SIZE: Final = 32  # HMAC-SHA256

ENCRYPTED_SUFFIX: Final = "+encrypted"
WASM_LAYER: Final = MediaType("application/vnd.wasm.content.layer.v1+wasm")


class NoDecryptionKey(Unauthorized):
    """None of the given private keys opens any wrapped-key entry (or no key was given)."""


# A descriptor annotation with more wrapped-key entries than this is hostile: each entry
# costs one private-key operation per key tried.
MAX_KEY_ENTRIES: Final = 256

# imgcrypt writes encrypted layers as OCI types; Docker layer types have no +encrypted
# form, so they map to their OCI equivalent first.
_DOCKER_TO_OCI: Final[Mapping[str, MediaType]] = {
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
}


def encrypted_media_type(mt: str) -> MediaType:
    """The media type of ``mt`` once encrypted: ``...tar+gzip`` -> ``...tar+gzip+encrypted``.

    Docker layer types map to the OCI type first, as imgcrypt does. Raises InvalidArgument
    for a type that is already encrypted, a Docker foreign layer (imgcrypt leaves those
    unencrypted) or anything that is not a layer.
    """
    m = MediaType(mt)
    base = m.base
    if base.endswith(ENCRYPTED_SUFFIX):
        raise InvalidArgument(f"media type {mt!r} is already encrypted")
    if base in _DOCKER_TO_OCI:
        return MediaType(_DOCKER_TO_OCI[base] + ENCRYPTED_SUFFIX)
    if base == WASM_LAYER or (m.is_layer() and not m.is_docker()):
        return MediaType(base + ENCRYPTED_SUFFIX)
    raise InvalidArgument(f"media type {mt!r} is not a layer type ocicrypt can encrypt")


def decrypted_media_type(mt: str) -> MediaType:
    """``mt`` without its ``+encrypted`` suffix; InvalidArgument if it has none."""
    base = MediaType(mt).base
    if not base.endswith(ENCRYPTED_SUFFIX):
        raise InvalidArgument(f"media type {mt!r} is not an encrypted type")
    return MediaType(base.removesuffix(ENCRYPTED_SUFFIX))


def filter_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """``annotations`` without the ``org.opencontainers.image.enc.*`` entries.

    What a decrypted layer's descriptor keeps (ocicrypt ``FilterOutAnnotations``).
    """
    return {k: v for k, v in annotations.items() if not k.startswith(ANNOTATION_PREFIX)}


def b64encode(data: bytes) -> str:
    """Standard, padded base64: Go's encoding of ``[]byte`` and of the annotation values."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, what: str) -> bytes:
    """Strict standard base64 (as Go's ``StdEncoding`` is); MalformedDocument otherwise."""
    if not isinstance(text, str):
        raise MalformedDocument(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedDocument(f"{what}: not standard base64") from None


def _dumps(obj: object) -> bytes:
    # Go's json.Marshal: struct field order, no spaces. Go also escapes <, > and & inside
    # strings, but base64 and digests never contain them.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _loads_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MalformedDocument(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise MalformedDocument(f"{what} is not a JSON object")
    return obj


@dataclass(frozen=True, slots=True, repr=False)
class PrivateOptions:
    """The secret half: layer key, CTR nonce and the plaintext blob digest.

    ``repr`` never shows the key. ``raw`` keeps the exact JSON bytes that were unwrapped so
    adding recipients re-wraps them unchanged, as ocicrypt does.
    """

    symkey: bytes
    nonce: bytes
    digest: Digest | None
    raw: bytes

    def __repr__(self) -> str:
        return f"PrivateOptions(digest={self.digest})"

    @classmethod
    def new(cls, symkey: bytes, nonce: bytes, digest: Digest) -> PrivateOptions:
        raw = _dumps(
            {
                "symkey": b64encode(symkey),
                "digest": str(digest),
                "cipheroptions": {"nonce": b64encode(nonce)},
            }
        )
        return cls(symkey, nonce, digest, raw)

    @classmethod
    def parse(cls, raw: bytes) -> PrivateOptions:
        """Parse unwrapped private options; MalformedDocument if they are not usable."""
        what = "ocicrypt private options"
        obj = _loads_object(raw, what)
        symkey = b64decode(obj.get("symkey"), f"{what} symkey")
        if len(symkey) != SYMKEY_SIZE:
            raise MalformedDocument(f"{what}: symkey must be {SYMKEY_SIZE} bytes")
        copts = obj.get("cipheroptions")
        if not isinstance(copts, dict) or "nonce" not in copts:
            raise MalformedDocument(f"{what}: cipheroptions.nonce missing")
        nonce = b64decode(copts["nonce"], f"{what} nonce")
        if len(nonce) != NONCE_SIZE:
            raise MalformedDocument(f"{what}: nonce must be {NONCE_SIZE} bytes")
        d = obj.get("digest")
        digest: Digest | None = None
        if d not in (None, ""):
            if not isinstance(d, str):
                raise MalformedDocument(f"{what}: digest is not a string")
            try:
                digest = Digest.parse(d)
            except InvalidDigest as e:
                raise MalformedDocument(f"{what}: {e}") from None
        return cls(symkey, nonce, digest, raw)


@dataclass(frozen=True, slots=True)
class PublicOptions:
    """The public half: cipher name and the HMAC over the ciphertext."""

    cipher: str
    hmac: bytes

    def to_json(self) -> bytes:
        return _dumps({"cipher": self.cipher, "hmac": b64encode(self.hmac), "cipheroptions": {}})

    @classmethod
    def parse(cls, raw: bytes) -> PublicOptions:
        """Parse public options; MalformedDocument or Unsupported (another cipher)."""
        what = "ocicrypt public options"
        obj = _loads_object(raw, what)
        cipher = obj.get("cipher")
        if not isinstance(cipher, str) or not cipher:
            raise MalformedDocument(f"{what}: no cipher given")
        if cipher != CIPHER_AES_256_CTR_HMAC_SHA256:
            raise Unsupported(f"layer cipher {cipher!r} is not supported")
        mac = obj.get("hmac")
        if mac in (None, ""):
            # Early ocicrypt releases stored the tag as cipheroptions["hmac"].
            copts = obj.get("cipheroptions")
            mac = copts.get("hmac") if isinstance(copts, dict) else None
        if mac in (None, ""):
            raise MalformedDocument(f"{what}: hmac missing")
        tag = b64decode(mac, f"{what} hmac")
        if len(tag) != HMAC_SIZE:
            raise MalformedDocument(f"{what}: hmac must be {HMAC_SIZE} bytes")
        return cls(cipher, tag)


def public_options(annotations: Mapping[str, str]) -> PublicOptions:
    """The public options of an encrypted layer's annotations."""
    text = annotations.get(ANNOTATION_PUBOPTS)
    if not text:
        raise MalformedDocument(f"encrypted layer has no {ANNOTATION_PUBOPTS} annotation")
    return PublicOptions.parse(b64decode(text, ANNOTATION_PUBOPTS))


def jwe_entries(annotations: Mapping[str, str]) -> list[bytes]:
    """The decoded JWE documents of the keys annotation (one per comma-separated entry).

    MalformedDocument when the annotation is missing or not base64; Unsupported when the
    layer's keys are wrapped only with schemes imgpipe lacks (pgp, pkcs7, pkcs11, providers).
    """
    text = annotations.get(ANNOTATION_KEYS_JWE)
    if not text:
        others = sorted(
            k.removeprefix(ANNOTATION_KEYS_PREFIX)
            for k, v in annotations.items()
            if k.startswith(ANNOTATION_KEYS_PREFIX) and v
        )
        if others:
            raise Unsupported(
                f"layer keys are wrapped with {', '.join(others)} only; imgpipe supports jwe"
            )
        raise MalformedDocument(f"encrypted layer has no {ANNOTATION_KEYS_JWE} annotation")
    parts = text.split(",")
    if len(parts) > MAX_KEY_ENTRIES:
        raise MalformedDocument(
            f"{ANNOTATION_KEYS_JWE} has {len(parts)} entries (at most {MAX_KEY_ENTRIES})"
        )
    return [b64decode(p, ANNOTATION_KEYS_JWE) for p in parts]
