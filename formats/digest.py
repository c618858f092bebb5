"""Content digests: ``algorithm:encoded``, validated once, compared as values.

The OCI image spec's grammar is ``algorithm ":" encoded``; imgpipe accepts the two
registered algorithms, sha256 (64 lowercase hex) and sha512 (128 lowercase hex). Uppercase
hex is refused, as the spec requires, so one blob has one name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from .errors import InvalidDigest

__all__ = ["ALGORITHMS", "Digest", "Digester"]

#: Supported algorithms and the length of their hex encoding.
ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A validated content digest. ``str(d)`` gives the canonical ``alg:hex`` form."""

    algorithm: str
    encoded: str

    def __post_init__(self) -> None:
        want = ALGORITHMS.get(self.algorithm)
        if want is None:
            raise InvalidDigest(f"unsupported digest algorithm {self.algorithm!r}")
        if len(self.encoded) != want or not _HEX.fullmatch(self.encoded):
            raise InvalidDigest(
                f"invalid {self.algorithm} digest {self.encoded!r}: "
                f"want {want} lowercase hex characters"
            )

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
