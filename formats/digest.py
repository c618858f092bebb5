"""Content digests: ``algorithm:encoded``, validated once, compared as values.

The OCI image spec's grammar is ``algorithm ":" encoded``; imgpipe accepts the two
registered algorithms, sha256 (64 lowercase hex) and sha512 (128 lowercase hex). Uppercase
hex is refused, as the spec requires, so one blob has one name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from .errors import InvalidDigest

__all__ = ["ALGORITHMS", "Digest", "Digester"]

#: Supported algorithms and the length of their hex encoding.
ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}

_HEX = re.compile(r"[0-9a-f]+")


class Digest:
    """A validated content digest. ``str(d)`` gives the canonical ``alg:hex`` form.

    A frozen value: equal, ordered and hashed by ``(algorithm, encoded)``, as the frozen,
    ordered dataclass it was. Written out because it is defined on every start-up, where
    that dataclass's generated methods cost ~2 ms.
    """

    __slots__ = ("algorithm", "encoded")
    __match_args__ = ("algorithm", "encoded")

    algorithm: str
    encoded: str

    def __init__(self, algorithm: str, encoded: str) -> None:
        want = ALGORITHMS.get(algorithm)
        if want is None:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        if len(encoded) != want or not _HEX.fullmatch(encoded):
            raise InvalidDigest(
                f"invalid {algorithm} digest {encoded!r}: want {want} lowercase hex characters"
            )
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "encoded", encoded)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a Digest")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a Digest")

    def __reduce__(self) -> tuple[type[Digest], tuple[str, str]]:
        return Digest, (self.algorithm, self.encoded)

    def __repr__(self) -> str:
        return f"Digest(algorithm={self.algorithm!r}, encoded={self.encoded!r})"

    def __hash__(self) -> int:
        return hash((self.algorithm, self.encoded))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return self.algorithm == other.algorithm and self.encoded == other.encoded

    def __lt__(self, other: Digest) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return (self.algorithm, self.encoded) < (other.algorithm, other.encoded)

    def __le__(self, other: Digest) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return (self.algorithm, self.encoded) <= (other.algorithm, other.encoded)

    def __gt__(self, other: Digest) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return (self.algorithm, self.encoded) > (other.algorithm, other.encoded)

    def __ge__(self, other: Digest) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return (self.algorithm, self.encoded) >= (other.algorithm, other.encoded)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:encoded``; raise InvalidDigest if it is not one."""
        if not isinstance(text, str):
            raise InvalidDigest(f"digest must be a string, not {type(text).__name__}")
        alg, sep, enc = text.partition(":")
        if not sep:
            raise InvalidDigest(f"invalid digest {text!r}: missing 'algorithm:'")
        return cls(alg, enc)

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data`` (for small documents; stream large blobs via Digester)."""
        d = Digester(algorithm)
        d.update(data)
        return d.digest()

    @property
    def hex(self) -> str:
        return self.encoded

    def short(self, n: int = 12) -> str:
        """The first ``n`` hex characters, as ``docker images`` shows them."""
        return self.encoded[:n]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


class Digester:
    """Incremental hashing that yields a Digest."""

    __slots__ = ("_h", "algorithm")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._h.hexdigest())
