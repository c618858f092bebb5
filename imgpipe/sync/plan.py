"""The sync plan: one JSON line per image, deterministic, the same on every machine.

::

    {"id": "sha256:...", "source": "src/team/app:v1", "target": "dst/zstd/team/app:v1",
     "repoKey": "src/team/app", "convert": {"compression": "zstd"}, "fingerprint": "sha256:..."}

``fingerprint`` hashes the canonical conversion options, the output format's version and
the recipients' public-key files (adding a recipient changes it, so the image is
re-encrypted); ``id`` hashes source, target and fingerprint. Lines are sorted by
``repoKey`` then ``source``. The plan holds key *paths*, never key material: workers
read the keys themselves. ``imgpipe convert --from-list`` also reads plain
``SRC DST`` lines (no conversion options: the command line's apply).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from imgpipe.formats.errors import InvalidArgument, NotFound
from imgpipe.formats.reference import Reference, parse_reference

from .listing import list_repositories, list_tags
from .spec import Entry, SyncSpec

if TYPE_CHECKING:
    from imgpipe.remote.client import RegistryClient

__all__ = [
    "FORMAT_VERSION",
    "PlanItem",
    "expand",
    "fingerprint",
    "plan_digest",
    "read_plan",
    "write_plan",
]

#: The version of what a conversion writes; bumped when the same options would write
#: other bytes, so every earlier result stops matching and is redone.
FORMAT_VERSION: Final = 1
#: tags/list requests at once while planning a registry entry
LIST_THREADS: Final = 8


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(convert: Mapping[str, Any]) -> str:
    """The fingerprint of conversion options (see the module docstring). NotFound when
    a recipient's key file is missing."""
    keys = []
    for spec in convert.get("recipients") or ():
        path = str(spec).partition(":")[2]
        try:
            keys.append(_sha256(Path(path).read_bytes()))
        except FileNotFoundError:
            raise NotFound(f"recipient {spec}: no such file") from None
        except OSError as e:
            raise InvalidArgument(f"recipient {spec}: {e.strerror}") from None
    # key paths do not matter, the keys do; decryption keys change nothing written
    options = {k: v for k, v in convert.items() if k not in ("recipients", "decryptKeys")}
    doc = {"v": FORMAT_VERSION, "options": options, "recipients": sorted(keys)}
    return _sha256(_canonical(doc))


@dataclass(frozen=True)
class PlanItem:
    """One image to convert: plain strings and JSON values only (it crosses processes
    and machines as it is)."""

    source: str
    target: str
    convert: Mapping[str, Any] = field(default_factory=dict)
    repo_key: str = ""
    fingerprint: str = ""
    id: str = ""

    @classmethod
    def make(cls, source: str, target: str, convert: Mapping[str, Any]) -> PlanItem:
        fp = fingerprint(convert)
        repo_key = parse_reference(source).name
        ident = _sha256(_canonical([source, target, fp]))
        return cls(source, target, dict(convert), repo_key, fp, ident)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "repoKey": self.repo_key,
            "convert": dict(self.convert),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PlanItem:
        try:
            return cls(
                str(obj["source"]),
                str(obj["target"]),
                dict(obj.get("convert") or {}),
                str(obj["repoKey"]),
                str(obj["fingerprint"]),
                str(obj["id"]),
            )
        except (KeyError, TypeError) as e:
            raise InvalidArgument(f"plan line: missing {e}") from None


def expand(spec: SyncSpec, client: RegistryClient) -> list[PlanItem]:
    """The plan of ``spec``: every image its entries name, listed from the registries
    (``_catalog`` and tags/list), filtered, sorted. Two entries naming one target: the
    first wins (InvalidArgument if their sources differ)."""
    items: dict[str, PlanItem] = {}
    for entry in spec.entries:
        for source, target in _pairs(entry, client):
            item = PlanItem.make(source, target, entry.convert)
            earlier = items.get(target)
            if earlier is not None and earlier.source != source:
                raise InvalidArgument(
                    f"{target}: named by two entries, from {earlier.source} and {source}"
                )
            items.setdefault(target, item)
    return sorted(items.values(), key=lambda i: (i.repo_key, i.source, i.target))


def _pairs(entry: Entry, client: RegistryClient) -> Iterator[tuple[str, str]]:
    if entry.type == "image":
        ref = parse_reference(entry.source)
        if not entry.tags(ref.tag or ""):
            return
        tag = (ref.tag or "latest") + entry.tag_suffix
        yield str(ref), _target(entry.target, tag, whole=True)
        return
    if entry.type == "repository":
        ref = parse_reference(entry.source)
        yield from _repo_pairs(entry, ref, list_tags(client, ref), entry.target)
        return
    host = entry.source
    paths = [p for p in list_repositories(client, host) if entry.repos(p)]
    # one tags/list per repository: a round trip each, so several at once
    with ThreadPoolExecutor(LIST_THREADS, thread_name_prefix="imgpipe-list") as ex:
        pages = ex.map(lambda p: list_tags(client, Reference(host, p)), paths)
        for path, tags in zip(paths, pages, strict=True):
            yield from _repo_pairs(entry, Reference(host, path), tags, f"{entry.target}/{path}")


def _repo_pairs(
    entry: Entry, ref: Reference, tags: list[str], target: str
) -> Iterator[tuple[str, str]]:
    for tag in tags:
        if entry.tags(tag):
            yield str(ref.with_tag(tag)), _target(target, tag + entry.tag_suffix, whole=False)


def _target(target: str, tag: str, *, whole: bool) -> str:
    """``target:tag``; an image entry's target may carry its own tag."""
    if whole:
        last = target.rpartition("/")[2]
        if ":" in last or "@" in last:
            return target
    return f"{target}:{tag}"


def plan_digest(items: Iterable[PlanItem]) -> str:
    """The digest of a plan (its ids in order): reports name the plan they ran."""
    return _sha256("\n".join(i.id for i in items).encode())


def write_plan(items: Iterable[PlanItem], out: Any) -> None:
    """One JSON line per item to the text stream ``out``."""
    for item in items:
        out.write(json.dumps(item.to_json(), sort_keys=True, separators=(",", ":")) + "\n")


def read_plan(path: str | Path, convert: Mapping[str, Any] | None = None) -> list[PlanItem]:
    """A plan file: JSON lines as :func:`write_plan` writes, or ``SRC DST`` lines made
    into items with ``convert``; ``#`` comments and blank lines skipped. NotFound,
    InvalidArgument naming the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"plan {path}: {e}") from None
    items = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                items.append(PlanItem.from_json(json.loads(line)))
                continue
            words = line.split()
            if len(words) != 2:
                raise InvalidArgument("want a JSON object or SRC DST")
            src, dst = (w.removeprefix("docker://") for w in words)
            items.append(PlanItem.make(src, dst, dict(convert or {})))
        except (ValueError, InvalidArgument) as e:
            raise InvalidArgument(f"plan {path}:{n}: {e}") from None
    return items
