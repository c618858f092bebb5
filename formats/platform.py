"""Platforms: ``os/arch[/variant]``, normalised and matched the way containerd does.

Three jobs live here:

* :meth:`Platform.parse` reads a user's specifier (``linux``, ``arm64``,
  ``linux/arm64/v8``, ``windows(10.0.17763)/amd64``) into a normalised Platform.
* :meth:`Platform.normalized` maps the many spellings of one platform to one value
  (``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64/v8``, ``armhf`` -> ``arm/v7``...).
* :class:`PlatformMatcher` decides which image platforms a wanted platform can run, and
  which it prefers, so a manifest can be picked out of an index.

Normal form (what :meth:`Platform.normalized` returns):

=============================  ==============================
spelling                       normal form
=============================  ==============================
``x86_64``, ``x86-64``         ``amd64`` (variant ``v1`` -> none)
``aarch64``, ``arm64``         ``arm64``, variant ``v8`` when none or ``8``
``armhf``, ``armv7l``          ``arm/v7``
``armel``, ``armv6l``          ``arm/v6``
``arm``                        ``arm/v7`` when no variant; ``5``/``6``/``8`` -> ``v5``...
``i386``, ``i686``, ``x86``    ``386`` (no variant)
``macos``                      ``darwin``; every OS is lowercased
=============================  ==============================

One choice differs from containerd: containerd's ``Normalize`` drops arm64's default
variant (``arm64/v8`` -> ``arm64``) while its ``Parse`` adds it back for three-part
specifiers. imgpipe always spells it out (``arm64/v8``), as image indexes do, so the
normal form is one value either way. Matching compares normal forms, so both
conventions match each other.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from .errors import InvalidArgument, MalformedDocument

__all__ = [
    "KNOWN_ARCHITECTURES",
    "KNOWN_OSES",
    "Platform",
    "PlatformMatcher",
    "best_match",
    "host_platform",
    "match",
]

#: Operating systems a one-word specifier is checked against (Go's GOOS list).
KNOWN_OSES: Final = frozenset(
    {
        "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios",
        "js", "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
    }
)  # fmt: skip

#: Architectures a one-word specifier is checked against (Go's GOARCH list), normalised.
KNOWN_ARCHITECTURES: Final = frozenset(
    {
        "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le",
        "loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le",
        "ppc", "riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
    }
)  # fmt: skip

# `os[(version[+feature]*)]`, the first component of a specifier (containerd's syntax,
# used for Windows images that must match the host's build).
# Patterns, compiled on first use by re's own cache: most commands parse no platform.
_OS_RE: Final = r"([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?"
_COMPONENT_RE: Final = r"[A-Za-z0-9_.-]+"
_VERSION_RE: Final = r"v?(\d+)(?:\.(\d+))?"


def _normalize_os(os_: str) -> str:
    os_ = os_.lower()
    return "darwin" if os_ == "macos" else os_


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i486", "i586", "i686", "x86", "386"):
        # 32-bit x86 has no variants worth telling apart for images.
        return "386", "" if arch != "386" else variant
    if arch in ("x86_64", "x86-64", "amd64"):
        # v1 is the baseline every amd64 CPU runs; images never spell it out.
        return "amd64", "" if variant in ("v1", "1") else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "v8" if variant in ("", "8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    m = re.fullmatch(r"armv(\d+)(?:l|hf|tel|el|b)?", arch)
    if m:
        # uname's spellings (armv7l, armv6l, armv5tel): the number is the variant.
        return "arm", f"v{m.group(1)}"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", f"v{variant}"
    return arch, variant


# A NamedTuple, not a frozen dataclass: the same equality, hash, repr and immutability
# (``_replace`` makes a changed copy), and ~0.2 ms to define instead of ~1.2 ms on every
# start-up.
class Platform(NamedTuple):
    """An OCI platform. Field names follow Python; JSON names follow the spec."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any) -> Platform:
        """Build from the spec's JSON object; MalformedDocument on missing or wrong fields."""
        if not isinstance(obj, dict):
            raise MalformedDocument("platform must be an object")
        os_, arch = obj.get("os"), obj.get("architecture")
        if not isinstance(os_, str) or not isinstance(arch, str):
            raise MalformedDocument("platform needs string 'os' and 'architecture'")
        variant = obj.get("variant", "")
        version = obj.get("os.version", "")
        features = obj.get("os.features", [])
        if not isinstance(variant, str) or not isinstance(version, str):
            raise MalformedDocument("platform 'variant' and 'os.version' must be strings")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise MalformedDocument("platform 'os.features' must be a list of strings")
        return cls(os_, arch, variant, version, tuple(features))

    def to_json(self) -> dict[str, Any]:
        """The spec's JSON object (keys in Go's struct order; empty fields left out)."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse a specifier ``os|arch|os/arch[/variant]`` into a normalised Platform.

        A single word is an OS if it is a known one (the architecture is then the
        host's), else an architecture (the OS is then the host's). The OS part may carry
        a version and features: ``windows(10.0.17763+win32k)/amd64``. The result is in
        normal form (see the module docstring).

        Raises InvalidArgument for wildcards, empty or unknown words, characters outside
        ``[A-Za-z0-9_.-]`` and more than three components.
        """
        if not isinstance(text, str):
            raise InvalidArgument(f"platform must be a string, not {type(text).__name__}")
        if "*" in text:
            raise InvalidArgument(f"platform {text!r}: wildcards are not supported")
        parts = text.split("/")
        if len(parts) > 3:
            raise InvalidArgument(f"platform {text!r}: want os, arch, os/arch or os/arch/variant")
        m = re.fullmatch(_OS_RE, parts[0])
        if m is None:
            raise InvalidArgument(f"platform {text!r}: invalid OS component {parts[0]!r}")
        for part in parts[1:]:
            if not re.fullmatch(_COMPONENT_RE, part):
                raise InvalidArgument(f"platform {text!r}: invalid component {part!r}")
        os_ = _normalize_os(m.group(1))
        version = urllib.parse.unquote(m.group(2) or "")
        features = tuple(urllib.parse.unquote(f) for f in (m.group(3) or "").split("+") if f)

        if len(parts) == 1:
            host = host_platform()
            if os_ in KNOWN_OSES:
                return cls(os_, host.architecture, host.variant, version, features)
            if version or features:
                raise InvalidArgument(f"platform {text!r}: unknown operating system")
            arch, variant = _normalize_arch(parts[0], "")
            if arch in KNOWN_ARCHITECTURES:
                return cls(host.os, arch, variant)
            raise InvalidArgument(f"platform {text!r}: unknown operating system or architecture")
        arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
        return cls(os_, arch, variant, version, features)

    def normalized(self) -> Platform:
        """This platform in normal form (see the module docstring); features sorted, unique."""
        arch, variant = _normalize_arch(self.architecture, self.variant)
        return self._replace(
            os=_normalize_os(self.os),
            architecture=arch,
            variant=variant,
            os_features=tuple(sorted(set(self.os_features))),
        )


def _sys_os() -> str:
    p = sys.platform
    if p.startswith("linux"):
        return "linux"
    if p in ("win32", "cygwin", "msys"):
        return "windows"
    # freebsd14 -> freebsd, sunos5 -> solaris; the rest are already Go's names.
    if p.startswith("sunos"):
        return "solaris"
    return re.sub(r"\d+$", "", p)


def host_platform() -> Platform:
    """The platform of this machine, normalised, from ``sys.platform`` and ``uname``.

    No files are read, so the amd64 micro-architecture level (v2, v3...) is not detected:
    an amd64 host reports plain ``amd64``. 32-bit ARM takes its variant from uname
    (``armv7l`` -> ``arm/v7``); arm64 is ``arm64/v8``.
    """
    # os.uname, not the platform module: what platform.machine() returns on POSIX, without
    # ~1.4 ms of imports on every `imgpipe run` (it picks the host's manifest)
    if hasattr(os, "uname"):
        machine = os.uname().machine
    else:  # pragma: no cover (Windows)
        import platform as host  # noqa: PLC0415

        machine = host.machine()
    arch, variant = _normalize_arch(machine or "unknown", "")
    return Platform(_sys_os(), arch, variant)


def _variant_number(variant: str) -> tuple[int, int] | None:
    m = re.fullmatch(_VERSION_RE, variant)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def _arm64_variant(major: int, minor: int) -> str:
    return f"v{major}" if minor == 0 else f"v{major}.{minor}"


def _compatible(p: Platform) -> list[Platform]:
    """Platforms ``p`` (normalised) can run, best first: ``p`` itself, then fallbacks."""
    out = [p]
    arch = p.architecture
    num = _variant_number(p.variant)
    if arch == "amd64":
        # x86-64 micro-architecture levels are supersets: v3 runs v2 and v1 code.
        # Normal form spells v1 as no variant.
        level = num[0] if num and num[1] == 0 else 1
        out += [p._replace(variant=f"v{n}") for n in range(level - 1, 1, -1)]
        if level > 1:
            out.append(p._replace(variant=""))
        # containerd lets amd64 run 386 images, last.
        out.append(p._replace(architecture="386", variant=""))
    elif arch == "arm":
        if num and num[1] == 0 and num[0] > 5:
            out += [p._replace(variant=f"v{n}") for n in range(num[0] - 1, 4, -1)]
    elif arch == "arm64":
        if num and num[0] >= 8:
            major, minor = num
            if major == 9:
                out += [p._replace(variant=_arm64_variant(9, n)) for n in range(minor - 1, -1, -1)]
                # v9.0 forked from v8.5: v9.x runs v8.(x+5), capped at v8.9.
                major, minor = 8, min(minor + 5, 9)
                out.append(p._replace(variant=_arm64_variant(8, minor)))
            if major == 8:
                out += [p._replace(variant=_arm64_variant(8, n)) for n in range(minor - 1, -1, -1)]
            # Every AArch64 CPU of these levels also runs 32-bit arm v8 and below.
            out += _compatible(p._replace(architecture="arm", variant="v8"))
        elif p.variant:
            out += _compatible(p._replace(architecture="arm"))
    return out


def _windows_build(version: str) -> str:
    return ".".join(version.split(".")[:3])


class PlatformMatcher:
    """Which image platforms a wanted platform accepts, and in which order of preference.

    Both sides are normalised before comparing. The OS must be equal. The architecture
    and variant must be one of the wanted platform's compatible list, best first (the
    rank of a match is its position in that list):

    * the wanted platform itself, always first;
    * ``amd64/vN``: ``amd64/v(N-1)`` ... ``amd64/v2``, ``amd64`` (v1), then ``386``;
    * ``arm/vN``: ``arm/v(N-1)`` down to ``arm/v5``;
    * ``arm64/v8.x``: ``arm64/v8.(x-1)`` ... ``arm64/v8``; ``arm64/v9.x``:
      ``arm64/v9.(x-1)`` ... ``arm64/v9``, then ``arm64/v8.min(x+5, 9)`` ... ``arm64/v8``;
      then ``arm/v8``, ``arm/v7``, ``arm/v6``, ``arm/v5``.

    With ``strict=True`` only the wanted platform itself matches (containerd's
    ``OnlyStrict``). An image's ``os.features`` must be a subset of the wanted ones. The
    OS version is compared only for Windows, and only when both sides give one: the
    first three numbers (major.minor.build) must be equal, as Windows needs for
    process-isolated containers.
    """

    __slots__ = ("_compat", "_want")

    def __init__(self, want: Platform, *, strict: bool = False) -> None:
        self._want = want.normalized()
        self._compat: tuple[Platform, ...] = (
            (self._want,) if strict else tuple(_compatible(self._want))
        )

    @property
    def want(self) -> Platform:
        """The wanted platform, normalised."""
        return self._want

    @property
    def compatible(self) -> tuple[Platform, ...]:
        """The platforms accepted, best first (os_version/os_features as wanted)."""
        return self._compat

    def rank(self, have: Platform) -> int | None:
        """Position of ``have`` in the preference order (0 = exact), or None if refused."""
        h = have.normalized()
        w = self._want
        if h.os != w.os:
            return None
        if not set(h.os_features) <= set(w.os_features):
            return None
        if (
            w.os == "windows"
            and w.os_version
            and h.os_version
            and _windows_build(w.os_version) != _windows_build(h.os_version)
        ):
            return None
        for i, c in enumerate(self._compat):
            if c.architecture == h.architecture and c.variant == h.variant:
                return i
        return None

    def match(self, have: Platform) -> bool:
        """True if an image built for ``have`` runs where ``want`` is wanted."""
        return self.rank(have) is not None

    def less(self, a: Platform, b: Platform) -> bool:
        """True if ``a`` is preferred over ``b`` (a refused platform is never preferred)."""
        ra, rb = self.rank(a), self.rank(b)
        return ra is not None and (rb is None or ra < rb)

    def order(self, candidates: Sequence[Platform]) -> list[int]:
        """Indexes of the matching candidates, best first; ties keep their input order."""
        ranked = [(r, i) for i, c in enumerate(candidates) if (r := self.rank(c)) is not None]
        return [i for _, i in sorted(ranked)]

    def best(self, candidates: Sequence[Platform]) -> int | None:
        """Index of the best matching candidate (earliest among equals), or None."""
        ordered = self.order(candidates)
        return ordered[0] if ordered else None

    def __repr__(self) -> str:
        return f"PlatformMatcher({str(self._want)!r}, compatible={len(self._compat)})"


def match(want: Platform, have: Platform, *, strict: bool = False) -> bool:
    """True if an image for ``have`` runs on ``want`` (see :class:`PlatformMatcher`)."""
    return PlatformMatcher(want, strict=strict).match(have)


def best_match(
    want: Platform, candidates: Sequence[Platform], *, strict: bool = False
) -> int | None:
    """Index of the candidate ``want`` prefers (see :class:`PlatformMatcher`), or None."""
    return PlatformMatcher(want, strict=strict).best(candidates)
