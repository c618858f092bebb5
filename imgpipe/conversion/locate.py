"""Where a location string points: the local store or a transport (registry, layout...).

The rules, which the package docstring states for users:

* a bare **source** is the local image of that name when the store has one, else the
  registry reference (``docker://`` forces the registry);
* a bare **destination** is a registry reference when its first component is a host
  (has a ``.`` or ``:``, or is ``localhost``), else a local name; ``local:`` forces the
  store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from imgpipe.formats.reference import TransportRef, parse_reference, parse_transport

__all__ = ["LOCAL_PREFIX", "Location", "locate"]

#: The prefix that names an image in the local store whatever it looks like.
LOCAL_PREFIX: Final = "local:"

_TRANSPORT_PREFIXES: Final = ("docker://", "oci:", "oci-archive:", "docker-archive:")


def _has_host(text: str) -> bool:
    first, sep, _ = text.partition("/")
    return bool(sep) and (any(c in first for c in ".:") or first == "localhost")


Location = tuple[Literal["store"], str] | tuple[Literal["transport"], TransportRef]


def locate(
    text: str | TransportRef, *, source: bool, local_exists: Callable[[str], bool]
) -> Location:
    """Where ``text`` points: ``("store", name)`` or ``("transport", TransportRef)``.

    The rules are in the module docstring. Raises InvalidReference for bad syntax.
    """
    if isinstance(text, TransportRef):
        return ("transport", text)
    if text.startswith(LOCAL_PREFIX):
        return ("store", str(parse_reference(text.removeprefix(LOCAL_PREFIX))))
    if text.startswith(_TRANSPORT_PREFIXES):
        return ("transport", parse_transport(text))
    ref = parse_reference(text)
    if source:
        if local_exists(str(ref)):
            return ("store", str(ref))
        return ("transport", TransportRef("docker", reference=ref))
    if _has_host(text):
        return ("transport", TransportRef("docker", reference=ref))
    return ("store", str(ref))
