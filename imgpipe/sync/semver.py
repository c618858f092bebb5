"""Semantic-version tag filters: ``tags: {semver: ">=1.2 <2"}``.

A tag is a version when it reads ``[v]MAJOR[.MINOR[.PATCH]][-PRE][+BUILD]`` (missing
parts are 0, as regsync and skopeo's ``images-by-semver`` read tags); other tags never
match a semver filter. A range is comparators (``>=``, ``>``, ``<=``, ``<``, ``=``,
``!=``, ``^``, ``~``) joined by spaces or commas (all must hold), alternatives joined by
``||``. A pre-release sorts before its release (``1.2.0-rc1 < 1.2.0``), and, as npm's
ranges do, matches only an alternative that names a pre-release of the same version
(``>=1.2 <2`` does not take ``2.0.0-rc1``; ``>=2.0.0-rc0`` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from imgpipe.formats.errors import InvalidArgument

__all__ = ["SemverRange", "parse_version"]

_VERSION_RE: Final = re.compile(
    r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?"
)
_COMPARATOR_RE: Final = re.compile(r"(>=|<=|!=|>|<|=|\^|~)?\s*(v?\d[0-9A-Za-z.+-]*)")

Version = tuple[int, int, int, tuple[tuple[int, int | str], ...]]
#: sorts a release after every pre-release of it
_RELEASE: Final = ((2, 0),)


def parse_version(text: str) -> Version | None:
    """The comparable form of a version tag, or None when the tag is no version."""
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        return None
    major, minor, patch, pre = m.groups()
    return (int(major), int(minor or 0), int(patch or 0), _pre(pre))


def _pre(pre: str | None) -> tuple[tuple[int, int | str], ...]:
    if not pre:
        return _RELEASE
    # numeric identifiers sort before alphanumeric ones, as SemVer 2.0 §11 says
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))


def _caret(v: Version) -> Callable[[Version], bool]:
    upper = (v[0] + 1, 0, 0) if v[0] else ((0, v[1] + 1, 0) if v[1] else (0, 0, v[2] + 1))
    return lambda x: v <= x < (*upper, ((0, 0),))


def _tilde(v: Version) -> Callable[[Version], bool]:
    return lambda x: v <= x < (v[0], v[1] + 1, 0, ((0, 0),))


_OPS: Final[dict[str, Callable[[Version], Callable[[Version], bool]]]] = {
    ">=": lambda v: lambda x: x >= v,
    ">": lambda v: lambda x: x > v,
    "<=": lambda v: lambda x: x <= v,
    "<": lambda v: lambda x: x < v,
    "=": lambda v: lambda x: x == v,
    "!=": lambda v: lambda x: x != v,
    "^": _caret,
    "~": _tilde,
}


@dataclass(frozen=True)
class SemverRange:
    """A parsed range; :meth:`matches` a tag."""

    text: str
    alternatives: tuple[tuple[tuple[Callable[[Version], bool], Version], ...], ...]

    @classmethod
    def parse(cls, text: str, shown: str = "semver") -> SemverRange:
        alternatives = []
        for part in text.split("||"):
            tests = []
            rest = part.replace(",", " ").strip()
            while rest:
                m = _COMPARATOR_RE.match(rest)
                version = parse_version(m.group(2)) if m else None
                if m is None or version is None:
                    raise InvalidArgument(f"{shown}: {text!r}: want comparators such as >=1.2 <2")
                tests.append((_OPS[m.group(1) or "="](version), version))
                rest = rest[m.end() :].strip()
            if not tests:
                raise InvalidArgument(f"{shown}: {text!r}: an empty alternative")
            alternatives.append(tuple(tests))
        return cls(text, tuple(alternatives))

    def matches(self, tag: str) -> bool:
        v = parse_version(tag)
        if v is None:
            return False
        return any(
            all(test(v) for test, _ in alt)
            and (v[3] == _RELEASE or any(c[:3] == v[:3] and c[3] != _RELEASE for _, c in alt))
            for alt in self.alternatives
        )
