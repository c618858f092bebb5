"""Strict JSON loading for small documents (manifests, indexes, configs, layout files).

Private: the public parsers in manifest, config and layout call these. The rules are
stricter than ``json.loads`` because two parsers reading one document differently is how
ambiguity attacks work (a registry validating one object, a client running another):

* the size is capped before anything is decoded (ResourceLimit);
* the bytes must be UTF-8 (RFC 8259 section 8.1), no BOM;
* duplicate object keys are refused (Go keeps the last, other parsers the first);
* ``NaN`` / ``Infinity`` are refused (not JSON);
* nesting so deep that it exhausts the stack is MalformedDocument, not RecursionError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, TypeAlias, TypeVar

from .errors import InvalidArgument, MalformedDocument, ResourceLimit

#: Largest manifest, index, config or layout file accepted, in bytes. The distribution
#: spec asks registries and clients to handle at least 4 MB; anything larger is refused
#: before it is decoded, so a hostile document cannot make us build a huge object.
MAX_DOCUMENT_SIZE: Final = 4 * 1024 * 1024


#: What the document parsers accept as input; they keep an immutable ``bytes`` copy.
BytesLike: TypeAlias = bytes | bytearray | memoryview

_T = TypeVar("_T")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MalformedDocument(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise MalformedDocument(f"{name} is not valid JSON")


def as_bytes(raw: Any, what: str) -> bytes:
    """``raw`` as immutable bytes; InvalidArgument if it is not bytes-like."""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    raise InvalidArgument(f"{what} must be bytes, not {type(raw).__name__}")


def load_object(raw: bytes, what: str, *, limit: int = MAX_DOCUMENT_SIZE) -> dict[str, Any]:
    """Decode ``raw`` as one JSON object under the rules in the module docstring."""
    if len(raw) > limit:
        raise ResourceLimit(f"{what} is {len(raw)} bytes, more than the limit of {limit}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedDocument(f"{what} is not UTF-8: {e}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except MalformedDocument as e:
        raise MalformedDocument(f"{what}: {e}") from None
    except ValueError as e:
        raise MalformedDocument(f"{what} is not JSON: {e}") from None
    except RecursionError:
        raise MalformedDocument(f"{what} is nested too deeply") from None
    if not isinstance(obj, dict):
        raise MalformedDocument(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


def dump_compact(obj: Mapping[str, Any]) -> bytes:
    """Canonical compact JSON: no spaces, keys in the given order, UTF-8 as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _opt(obj: Mapping[str, Any], key: str, what: str, kind: type[_T], noun: str) -> _T | None:
    """``obj[key]`` if of ``kind``, None if absent or null; MalformedDocument otherwise."""
    v = obj.get(key)
    if v is not None and not isinstance(v, kind):
        raise MalformedDocument(f"{what}: {key!r} must be {noun}")
    return v


def opt_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    """``obj[key]`` if a string, "" if absent or null; MalformedDocument otherwise."""
    return _opt(obj, key, what, str, "a string") or ""


def opt_list(obj: Mapping[str, Any], key: str, what: str) -> list[Any] | None:
    """``obj[key]`` if a list, None if absent or null; MalformedDocument otherwise."""
    return _opt(obj, key, what, list, "a list")


def opt_object(obj: Mapping[str, Any], key: str, what: str) -> dict[str, Any] | None:
    """``obj[key]`` if an object, None if absent or null; MalformedDocument otherwise."""
    return _opt(obj, key, what, dict, "an object")
