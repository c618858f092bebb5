"""JWE key wrapping in go-jose's layout (what ocicrypt's ``keywrap/jwe`` writes and reads).

ocicrypt calls go-jose ``NewMultiEncrypter(A256GCM, recipients)`` and ``FullSerialize()``:

- one recipient: the *flattened* JSON syntax, ``alg`` (and ``epk`` for ECDH-ES) inside the
  protected header, ``encrypted_key`` at top level;
- several: the *general* syntax, protected ``{"enc":"A256GCM"}`` and ``recipients[]`` with
  a per-recipient ``header`` holding ``alg`` (and ``epk``).

go-jose (v2, as vendored by skopeo 1.9) also repeats the first recipient's
``encrypted_key`` at the top level of the general syntax; parsers ignore it when
``recipients`` is present, so we leave it out (RFC 7516 section 7.2.1).

jwcrypto does the cryptography. For one recipient, its compact serialization is exactly
go-jose's flattened form re-spelt (it moves ``epk`` into the protected header before
encrypting), so we serialize compactly and split the five parts into JSON members.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from imgpipe.formats import InvalidArgument, MalformedDocument

from .keys import DecryptKey, Recipient

__all__ = ["ALLOWED_ALGORITHMS", "CONTENT_ENCRYPTION", "unwrap", "wrap"]

CONTENT_ENCRYPTION: Final = "A256GCM"

# What ocicrypt's unwrapper accepts, and nothing else: no "dir", no password-based or
# symmetric key wrapping, no RSA1_5.
ALLOWED_ALGORITHMS: Final = [
    "RSA-OAEP",
    "RSA-OAEP-256",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
    "A128GCM",
    "A192GCM",
    "A256GCM",
    "A128CBC-HS256",
    "A192CBC-HS384",
    "A256CBC-HS512",
]

# The wrapped document is a few hundred bytes; a bound keeps a "zip":"DEF" bomb harmless.
MAX_PLAINTEXT: Final = 64 * 1024


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def wrap(plaintext: bytes, recipients: Sequence[Recipient]) -> bytes:
    """One JWE (JSON serialization) of ``plaintext`` readable by each of ``recipients``."""
    # jwcrypto costs 70 ms to import: only commands that wrap or unwrap keys pay it.
    from jwcrypto import jwe  # type: ignore[import-untyped]  # noqa: PLC0415

    if not recipients:
        raise InvalidArgument("no recipients to wrap the layer key for")
    if len(recipients) == 1:
        r = recipients[0]
        token = jwe.JWE(
            plaintext,
            protected={"alg": r.algorithm, "enc": CONTENT_ENCRYPTION},
            algs=ALLOWED_ALGORITHMS,
        )
        token.add_recipient(r.jwk())
        protected, ek, iv, ct, tag = token.serialize(compact=True).split(".")
        return _compact(
            {"protected": protected, "encrypted_key": ek, "iv": iv, "ciphertext": ct, "tag": tag}
        )
    token = jwe.JWE(plaintext, protected={"enc": CONTENT_ENCRYPTION}, algs=ALLOWED_ALGORITHMS)
    for r in recipients:
        token.add_recipient(r.jwk(), header={"alg": r.algorithm})
    general = json.loads(token.serialize())
    # go-jose's member order, for readers who diff annotations by eye.
    general["recipients"] = [
        {k: rec[k] for k in ("header", "encrypted_key") if k in rec}
        for rec in general["recipients"]
    ]
    order = ("protected", "recipients", "iv", "ciphertext", "tag")
    return _compact({k: general[k] for k in order if k in general})


def parse(entry: bytes) -> Any:
    """Parse one JWE document (flattened or general JSON); MalformedDocument if it is not."""
    from jwcrypto import jwe  # noqa: PLC0415
    from jwcrypto.common import JWException  # type: ignore[import-untyped]  # noqa: PLC0415

    try:
        text = entry.decode("utf-8")
        if not text.lstrip().startswith("{"):
            # jwcrypto would also take the compact form; ocicrypt never writes it.
            raise ValueError
        token = jwe.JWE(algs=ALLOWED_ALGORITHMS)
        token.deserialize(text)
    except (ValueError, JWException):
        raise MalformedDocument("a wrapped-key entry is not a JWE JSON document") from None
    return token


def unwrap(token: Any, key: DecryptKey) -> bytes | None:
    """The plaintext of a parsed JWE if ``key`` opens one of its recipients, else None."""
    from jwcrypto.common import JWException  # noqa: PLC0415

    try:
        token.decrypt(key.jwk(), max_plaintext=MAX_PLAINTEXT)
    except JWException:
        return None
    payload = token.plaintext
    return bytes(payload) if payload else None
