"""Loading the keys ocicrypt's JWE scheme uses: private keys to decrypt, public keys to encrypt.

Spec strings follow ocicrypt's command-line conventions (skopeo ``--decryption-key`` and
``--encryption-key``, imgcrypt ``--key`` and ``--recipient``):

- private key: ``FILE``, ``FILE:PASSWORD``, ``FILE:pass=PASSWORD`` or
  ``FILE:file=PASSWORDFILE``; PEM (PKCS#1, SEC1 or PKCS#8, encrypted or not) or DER.
- recipient: ``jwe:FILE`` with a PEM/DER public key or an X.509 certificate.

Key material and passwords never appear in a repr, a str or an exception message: messages
name the file, never its content. Exceptions from the parsing library are not chained
(``from None``) so their text cannot leak either.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imgpipe.formats import InvalidArgument, NotFound, Unsupported

__all__ = [
    "ALG_ECDH_ES_A256KW",
    "ALG_RSA_OAEP",
    "ALG_RSA_OAEP_256",
    "DecryptKey",
    "Recipient",
    "load_private_key",
    "load_recipient",
]

ALG_RSA_OAEP: Final = "RSA-OAEP"
ALG_RSA_OAEP_256: Final = "RSA-OAEP-256"
ALG_ECDH_ES_A256KW: Final = "ECDH-ES+A256KW"
# What ocicrypt's JWE wrapper picks for a bare public key (keywrapper_jwe.go).
DEFAULT_RSA_ALGORITHM: Final = ALG_RSA_OAEP
DEFAULT_EC_ALGORITHM: Final = ALG_ECDH_ES_A256KW
_RSA_ALGORITHMS: Final = (ALG_RSA_OAEP, ALG_RSA_OAEP_256)
_EC_ALGORITHMS: Final = ("ECDH-ES+A128KW", "ECDH-ES+A192KW", ALG_ECDH_ES_A256KW)

# The curves go-jose implements for ECDH-ES.
_CURVES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

# A key file larger than this is not a key; refuse before reading it into memory.
MAX_KEY_FILE_SIZE: Final = 1 << 20

_OTHER_SCHEMES: Final = ("pgp", "pkcs7", "pkcs11", "provider")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_K = TypeVar("_K", bound=PrivateKey | PublicKey)


def _describe(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return f"EC-{_CURVES[key.curve.name]}"


class _Key(Generic[_K]):
    """What both kinds of key hold: the key, what kind it is, the file it came from, and
    its JWK (built once, on first use)."""

    __slots__ = ("_jwk", "_key", "kind", "source")

    def __init__(self, key: _K, source: str) -> None:
        self._key: _K = key
        self._jwk: Any = None
        self.kind = _describe(key)
        self.source = source

    def jwk(self) -> Any:
        """The key as a jwcrypto JWK (built once, on first use)."""
        if self._jwk is None:
            # jwcrypto costs 70 ms to import: load it when a key is first used.
            from jwcrypto import jwk  # type: ignore[import-untyped]  # noqa: PLC0415

            self._jwk = jwk.JWK.from_pyca(self._key)
        return self._jwk


class DecryptKey(_Key[PrivateKey]):
    """A loaded private key (RSA, or EC on P-256/P-384/P-521).

    Holds the key in memory only. ``repr``/``str`` show the key type and the file it came
    from, never key material or the password.
    """

    __slots__ = ()

    def __init__(self, key: PrivateKey, *, source: str = "") -> None:
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _CURVES:
            raise Unsupported(f"EC curve {key.curve.name} is not usable with JWE")
        super().__init__(key, source)

    def __repr__(self) -> str:
        return f"DecryptKey({self.kind}, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # A key must not end up in a pickle (a multiprocessing queue, a cache file).
        raise TypeError("DecryptKey cannot be pickled")

    def public_key(self) -> PublicKey:
        return self._key.public_key()


class Recipient(_Key[PublicKey]):
    """A public key to wrap the layer key for, with the JWE algorithm to use.

    ``algorithm`` defaults to what ocicrypt picks: ``RSA-OAEP`` for RSA keys and
    ``ECDH-ES+A256KW`` for EC keys; ``RSA-OAEP-256`` may be chosen for RSA.
    """

    __slots__ = ("algorithm",)

    def __init__(self, key: PublicKey, *, algorithm: str | None = None, source: str = "") -> None:
        if isinstance(key, rsa.RSAPublicKey):
            allowed: tuple[str, ...] = _RSA_ALGORITHMS
            default = DEFAULT_RSA_ALGORITHM
        else:
            if key.curve.name not in _CURVES:
                raise Unsupported(f"EC curve {key.curve.name} is not usable with JWE")
            allowed, default = _EC_ALGORITHMS, DEFAULT_EC_ALGORITHM
        alg = algorithm or default
        if alg not in allowed:
            raise InvalidArgument(
                f"JWE algorithm {alg!r} does not fit a {_describe(key)} key "
                f"(use one of {', '.join(allowed)})"
            )
        super().__init__(key, source)
        self.algorithm = alg

    def __repr__(self) -> str:
        return f"Recipient({self.kind}, {self.algorithm}, source={self.source!r})"

    __str__ = __repr__


def _read_key_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_KEY_FILE_SIZE:
                raise InvalidArgument(f"{what} file {path!r} is too large to be a key")
            return f.read(MAX_KEY_FILE_SIZE + 1)
    except FileNotFoundError:
        raise NotFound(f"{what} file {path!r} not found") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{what} file {path!r} is a directory") from None
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} file {path!r}: {e.strerror}") from None


def _split_private_spec(spec: str) -> tuple[str, str | None]:
    """``FILE[:PASSWORD]`` -> (file, password spec). A file name may itself hold colons:
    the first prefix naming an existing file wins; with none, split at the first colon
    (ocicrypt's rule) so the error names the file the user most likely meant."""
    if os.path.exists(spec):
        return spec, None
    idx = spec.find(":")
    while idx != -1:
        if os.path.isfile(spec[:idx]):
            return spec[:idx], spec[idx + 1 :]
        idx = spec.find(":", idx + 1)
    path, sep, rest = spec.partition(":")
    return path, (rest if sep else None)


def _password(pwspec: str | None, path: str) -> bytes | None:
    """ocicrypt's password forms: ``pass=X``, ``file=F`` or the bare password."""
    if pwspec is None:
        return None
    if pwspec.startswith("pass="):
        return pwspec[5:].encode()
    if pwspec.startswith("file="):
        data = _read_key_file(pwspec[5:], "password")
        # A password file written with echo ends in a newline that is not part of it.
        return data.removesuffix(b"\n").removesuffix(b"\r")
    if pwspec.startswith("fd="):
        raise Unsupported(f"password for {path!r}: the fd= form is not supported")
    return pwspec.encode()


def _load_private(data: bytes, password: bytes | None, path: str) -> Any:
    is_pem = b"-----BEGIN" in data
    loader: Callable[..., Any] = (
        serialization.load_pem_private_key if is_pem else serialization.load_der_private_key
    )
    encrypted = is_pem and (b"ENCRYPTED" in data)
    try:
        try:
            return loader(data, password)
        except TypeError:
            if password is not None and not encrypted:
                # ocicrypt ignores a password given for an unencrypted key; so do we.
                return loader(data, None)
            raise
    except TypeError:
        raise InvalidArgument(
            f"private key file {path!r} is encrypted: give its password as FILE:PASSWORD"
        ) from None
    except UnsupportedAlgorithm:
        raise Unsupported(f"private key file {path!r}: key type not supported") from None
    except ValueError:
        if encrypted:
            raise InvalidArgument(f"wrong password for private key file {path!r}") from None
        raise InvalidArgument(f"file {path!r} is not a PEM or DER private key") from None


def load_private_key(spec: str) -> DecryptKey:
    """Load a private key from ``FILE[:PASSWORD]`` (see the module doc for password forms).

    Raises NotFound (no such file), InvalidArgument (wrong or missing password, not a
    private key, unreadable), Unsupported (a key type or curve JWE cannot use, e.g. Ed25519).
    """
    if not spec:
        raise InvalidArgument("empty private key spec")
    path, pwspec = _split_private_spec(spec)
    password = _password(pwspec, path)
    data = _read_key_file(path, "private key")
    key = _load_private(data, password, path)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise Unsupported(
            f"private key file {path!r} holds a {type(key).__name__.lstrip('_')}; "
            "ocicrypt JWE uses RSA or EC keys"
        )
    return DecryptKey(key, source=path)


def _load_public(data: bytes, path: str) -> Any:
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise InvalidArgument(f"file {path!r} holds an unreadable certificate") from None
    attempts: list[Callable[[bytes], Any]] = (
        [serialization.load_pem_public_key]
        if b"-----BEGIN" in data
        else [
            serialization.load_der_public_key,
            lambda d: x509.load_der_x509_certificate(d).public_key(),
        ]
    )
    for load in attempts:
        try:
            return load(data)
        except (ValueError, UnsupportedAlgorithm):
            continue
    if b"PRIVATE KEY" in data:
        raise InvalidArgument(f"file {path!r} holds a private key; a recipient is a public key")
    raise InvalidArgument(f"file {path!r} is not a public key or certificate")


def load_recipient(spec: str, *, algorithm: str | None = None) -> Recipient:
    """Load an encryption recipient from ``jwe:FILE`` (public key or certificate, PEM or DER).

    ``algorithm`` overrides the JWE key algorithm (default: ocicrypt's choice for the key).
    Raises Unsupported for ocicrypt's other schemes (pgp, pkcs7, pkcs11, provider), NotFound
    for a missing file, InvalidArgument for a file that is not a usable public key.
    """
    scheme, sep, path = spec.partition(":")
    if not sep or not path:
        raise InvalidArgument(f"recipient {spec!r}: expected jwe:PUBKEY.pem")
    if scheme != "jwe":
        if scheme in _OTHER_SCHEMES or scheme.startswith("provider."):
            raise Unsupported(
                f"recipient scheme {scheme!r} is not supported; imgpipe encrypts with jwe only"
            )
        raise InvalidArgument(f"recipient {spec!r}: unknown scheme {scheme!r}; expected jwe:")
    key = _load_public(_read_key_file(path, "public key"), path)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise Unsupported(f"public key file {path!r}: ocicrypt JWE uses RSA or EC keys")
    return Recipient(key, algorithm=algorithm, source=path)
