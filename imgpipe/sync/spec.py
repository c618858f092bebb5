"""A sync spec: what to convert where (``imgpipe sync plan SPEC.yaml`` reads it).

::

    version: 1
    defaults:
      convert: {compression: zstd, oci: true}
    sync:
      - type: registry              # registry | repository | image
        source: src.example.com
        repos: {allow: ["^team/"], deny: ["-cache$"]}
        tags: {allow: ["^v[0-9]"], semver: ">=1.2 <2"}
        target: dst.example.com/zstd   # the source's repository path is appended
        tagSuffix: ""
      - type: image
        source: src.example.com/customer/app:1.0
        target: customer.example.com/app    # repository (its tag: the source's)
        convert: {recipients: ["jwe:keys/customer.pub.pem"]}

An entry's ``convert`` goes over ``defaults.convert`` key by key. The convert keys are
:data:`CONVERT_KEYS` (ConvertOptions' fields, camelCase); key paths are relative to the
spec file. YAML is parsed by PyYAML (``yaml.safe_load``: no tags, no objects); a spec
that is JSON is YAML too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from imgpipe.formats.errors import InvalidArgument, NotFound

from .semver import SemverRange

__all__ = ["CONVERT_KEYS", "ENTRY_TYPES", "Entry", "SyncSpec", "load_spec", "parse_spec"]

#: Entry types: a whole registry (its ``_catalog``), one repository (its tags), one image.
ENTRY_TYPES: Final = ("registry", "repository", "image")
#: The conversion keys an entry may set, and the ConvertOptions field each one is.
CONVERT_KEYS: Final = {
    "compression": "compression",
    "level": "level",
    "oci": "oci",
    "recipients": "recipients",
    "encryptLayers": "encrypt_layers",
    "decryptKeys": "decrypt_keys",
    "platforms": "platforms",
}
_ENTRY_KEYS: Final = frozenset(
    {"type", "source", "target", "repos", "tags", "tagSuffix", "convert"}
)
_FILTER_KEYS: Final = {"repos": {"allow", "deny"}, "tags": {"allow", "deny", "semver"}}


@dataclass(frozen=True)
class Filter:
    """Allow/deny regular expressions (``re.search``); an empty allow list allows all."""

    allow: tuple[re.Pattern[str], ...] = ()
    deny: tuple[re.Pattern[str], ...] = ()
    semver: SemverRange | None = None

    def __call__(self, name: str) -> bool:
        if self.allow and not any(p.search(name) for p in self.allow):
            return False
        if any(p.search(name) for p in self.deny):
            return False
        return self.semver is None or self.semver.matches(name)


@dataclass(frozen=True)
class Entry:
    """One ``sync:`` entry, checked."""

    type: str
    source: str
    target: str
    repos: Filter = field(default_factory=Filter)
    tags: Filter = field(default_factory=Filter)
    tag_suffix: str = ""
    convert: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncSpec:
    """A whole spec: its entries in file order."""

    entries: tuple[Entry, ...]


def load_spec(path: str | Path) -> SyncSpec:
    """Read and check the spec file ``path``. NotFound, InvalidArgument (one line
    naming the file and the key that is wrong)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"sync spec {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"sync spec {path}: {e}") from None
    import yaml  # noqa: PLC0415 (only sync reads YAML)

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidArgument(f"sync spec {path}: not YAML: {' '.join(str(e).split())}") from None
    return parse_spec(doc, base=p.parent, shown=str(path))


def parse_spec(doc: object, *, base: Path = Path(), shown: str = "sync spec") -> SyncSpec:
    """Check a parsed spec document; key paths are made relative to ``base``."""
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{shown}: want a mapping with version and sync")
    if doc.get("version", 1) != 1:
        raise InvalidArgument(f"{shown}: version {doc.get('version')!r}: only 1 is known")
    unknown = set(doc) - {"version", "defaults", "sync"}
    if unknown:
        raise InvalidArgument(f"{shown}: unknown key {sorted(unknown)[0]!r}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"convert"}:
        raise InvalidArgument(f"{shown}: defaults: want a mapping with convert")
    base_convert = _convert(defaults.get("convert") or {}, base, f"{shown}: defaults.convert")
    entries = doc.get("sync")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{shown}: sync: want a list of entries")
    return SyncSpec(
        tuple(_entry(e, base_convert, base, f"{shown}: sync[{i}]") for i, e in enumerate(entries))
    )


def _entry(obj: object, defaults: Mapping[str, Any], base: Path, shown: str) -> Entry:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{shown}: want a mapping")
    unknown = set(obj) - _ENTRY_KEYS
    if unknown:
        raise InvalidArgument(f"{shown}: unknown key {sorted(unknown)[0]!r}")
    kind = obj.get("type", "image")
    if kind not in ENTRY_TYPES:
        raise InvalidArgument(f"{shown}: type {kind!r}: want one of {', '.join(ENTRY_TYPES)}")
    source, target = obj.get("source"), obj.get("target")
    if not isinstance(source, str) or not source:
        raise InvalidArgument(f"{shown}: source: want a registry, repository or image")
    if not isinstance(target, str) or not target:
        raise InvalidArgument(f"{shown}: target: want a registry or repository prefix")
    suffix = obj.get("tagSuffix", "")
    if not isinstance(suffix, str):
        raise InvalidArgument(f"{shown}: tagSuffix: want a string")
    convert = {**defaults, **_convert(obj.get("convert") or {}, base, f"{shown}.convert")}
    return Entry(
        kind,
        source.removeprefix("docker://").rstrip("/"),
        target.removeprefix("docker://").rstrip("/"),
        _filter(obj.get("repos") or {}, "repos", f"{shown}.repos"),
        _filter(obj.get("tags") or {}, "tags", f"{shown}.tags"),
        suffix,
        convert,
    )


def _filter(obj: object, kind: str, shown: str) -> Filter:
    if not isinstance(obj, dict) or set(obj) - _FILTER_KEYS[kind]:
        keys = ", ".join(sorted(_FILTER_KEYS[kind]))
        raise InvalidArgument(f"{shown}: want a mapping with {keys}")

    def patterns(key: str) -> tuple[re.Pattern[str], ...]:
        value = obj.get(key) or []
        if isinstance(value, str):
            value = [value]
        try:
            return tuple(re.compile(str(v)) for v in value)
        except re.error as e:
            raise InvalidArgument(f"{shown}.{key}: bad regular expression: {e}") from None

    semver = obj.get("semver")
    return Filter(
        patterns("allow"),
        patterns("deny"),
        SemverRange.parse(str(semver), f"{shown}.semver") if semver is not None else None,
    )


def _convert(obj: object, base: Path, shown: str) -> dict[str, Any]:
    """The conversion keys, checked and canonical (key paths relative to ``base``)."""
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{shown}: want a mapping")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in CONVERT_KEYS:
            raise InvalidArgument(
                f"{shown}: unknown key {key!r}: want {', '.join(sorted(CONVERT_KEYS))}"
            )
        if key in ("recipients", "decryptKeys"):
            out[key] = [_key_path(str(v), key, base) for v in _strings(value, f"{shown}.{key}")]
        elif key == "platforms":
            out[key] = _strings(value, f"{shown}.{key}")
        elif key == "encryptLayers":
            out[key] = None if value is None else [int(i) for i in _list(value, shown)]
        elif key == "oci":
            out[key] = bool(value)
        elif key == "level":
            out[key] = None if value is None else int(value)
        else:
            out[key] = None if value is None else str(value)
    return out


def _list(value: object, shown: str) -> Sequence[Any]:
    if isinstance(value, str) or not isinstance(value, list):
        raise InvalidArgument(f"{shown}: want a list")
    return value


def _strings(value: object, shown: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in _list(value, shown)]


def _key_path(spec: str, key: str, base: Path) -> str:
    """A key spec with its file made relative to the spec's folder (``jwe:`` kept)."""
    if key == "recipients":
        scheme, sep, path = spec.partition(":")
        if not sep:
            raise InvalidArgument(f"recipient {spec!r}: expected jwe:PUBKEY.pem")
        return f"{scheme}:{base / path}" if not Path(path).is_absolute() else spec
    path, sep, password = spec.partition(":")
    full = str(base / path) if not Path(path).is_absolute() else path
    return full + sep + password
