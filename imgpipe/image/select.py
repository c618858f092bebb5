"""The one platform/manifest choice, in two layers of one rule.

The rule (containerd's): of the candidates that say their platform, the one the wanted
platform prefers (default: this host), as :class:`~imgpipe.formats.platform.PlatformMatcher`
ranks them. Its callers:

* :func:`follow` -- pull's walk of an index: that best entry, plus every entry without a
  platform (nested indexes and artifacts apply to every platform), or every entry with
  ``all_platforms``.
* :func:`pick` -- unpack and run, over the manifests they can use (those in the store):
  with one candidate and no platform asked for, that one whatever it says; else the best.
* :func:`matching` -- convert's ``--platform`` filter: the entries any of the platforms
  asked for strictly matches (untyped entries kept).

Each returns what it chose, or None/empty where the caller words the NotFound itself
(the messages name the image the way each verb knows it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import NotFound
from imgpipe.formats.manifest import Index
from imgpipe.formats.platform import Platform, PlatformMatcher, host_platform

__all__ = ["best", "follow", "matching", "pick"]

T = TypeVar("T")


def _descriptor_platform(d: Descriptor) -> Platform | None:
    return d.platform


def best(
    candidates: Sequence[T],
    want: Platform | None = None,
    platform_of: Callable[[T], Platform | None] | None = None,
) -> T | None:
    """The candidate ``want`` (default: this host) prefers among those with a platform.

    ``platform_of`` says a candidate's platform (default: ``candidate.platform``, a
    Descriptor's).
    """
    of = platform_of or cast("Callable[[T], Platform | None]", _descriptor_platform)
    typed: list[tuple[T, Platform]] = []
    for c in candidates:
        p = of(c)
        if p is not None:
            typed.append((c, p))
    found = PlatformMatcher(want or host_platform()).best([p for _, p in typed])
    return None if found is None else typed[found][0]


def pick(
    candidates: Sequence[T],
    want: Platform | None = None,
    platform_of: Callable[[T], Platform | None] | None = None,
) -> T | None:
    """Unpack's and run's choice: with one candidate and no platform asked for, that one;
    else :func:`best` for ``want`` (default: this host). None when nothing fits."""
    if want is None and len(candidates) == 1:
        return candidates[0]
    return best(candidates, want, platform_of)


def follow(index: Index, want: Platform | None, all_platforms: bool) -> tuple[Descriptor, ...]:
    """The entries of ``index`` pull follows: all, or the best match for ``want``
    (default: this host) plus every entry without a platform, as containerd does.

    NotFound when no entry fits, listing the platforms the index has.
    """
    if all_platforms:
        return index.manifests
    untyped = [d for d in index.manifests if d.platform is None]
    chosen = best(index.manifests, want)
    if chosen is None and not untyped:
        have = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        target = want or host_platform()
        raise NotFound(f"no manifest for platform {target} in index {index.digest} (has: {have})")
    return tuple(([chosen] if chosen is not None else []) + untyped)


def matching(entries: Sequence[Descriptor], platforms: Sequence[Platform]) -> list[Descriptor]:
    """Convert's filter: the entries whose platform one of ``platforms`` strictly matches,
    in order; entries without a platform, and every entry when ``platforms`` is empty,
    are kept."""
    if not platforms:
        return list(entries)
    matchers = [PlatformMatcher(p, strict=True) for p in platforms]
    return [d for d in entries if d.platform is None or any(m.match(d.platform) for m in matchers)]
