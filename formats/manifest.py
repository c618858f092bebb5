"""Image manifests and indexes (OCI and Docker schema 2), parsed strictly, kept as bytes.

A parsed document keeps the exact bytes it was parsed from (``raw``) and their sha256
(``digest``): a digest is always taken over bytes, never over re-serialised JSON, so what
we verify is what the registry served and what we push is what we were given.

Validation, in order (each a hard error, nothing is guessed):

1. ``len(raw) > MAX_DOCUMENT_SIZE`` -> ResourceLimit; not UTF-8 JSON, not an object,
   duplicate keys -> MalformedDocument.
2. Docker schema 1 (``schemaVersion`` 1, an ``fsLayers`` field, or a schema 1 media
   type) -> Unsupported, with a message telling to re-push the image as schema 2 or OCI.
3. The caller's media type (usually a registry's Content-Type) and the document's own
   ``mediaType`` must agree when both are present. Generic types some registries send
   (``application/json``, ``text/plain``, ``application/octet-stream``) count as absent.
4. The kind comes from that media type, else from the shape (``manifests`` -> index,
   ``config``/``layers`` -> manifest). A document whose fields contradict its kind (a
   manifest with ``manifests``, an index with ``config`` or ``layers``) is refused: that is
   the ambiguity of CVE-2021-41190, where one document could be read as both.
5. ``schemaVersion`` must be the integer 2; every field must have its spec type; every
   descriptor must have a valid digest and a non-negative size (MalformedDocument).

Media types of layers, configs and artifacts are not judged: they pass through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal

from ._json import (
    MAX_DOCUMENT_SIZE,
    BytesLike,
    as_bytes,
    dump_compact,
    load_object,
    opt_list,
    opt_str,
)
from ._record import NOT_GIVEN, Record, _set
from .descriptor import Descriptor, str_map
from .digest import Digest
from .errors import InvalidArgument, MalformedDocument, Unsupported
from .mediatype import OCI_INDEX, OCI_MANIFEST, MediaType
from .platform import Platform, PlatformMatcher

__all__ = [
    "MAX_DOCUMENT_SIZE",
    "SCHEMA1_MESSAGE",
    "Index",
    "Manifest",
    "parse_document",
    "parse_index",
    "parse_manifest",
]

#: What a user is told when an image is Docker schema 1 (removed from Docker and
#: containerd 2.0; its layers are unverifiable in our model).
SCHEMA1_MESSAGE: Final = (
    "Docker image manifest schema 1 is not supported (it is deprecated and removed from "
    "Docker and containerd); re-push the image with schema 2 or OCI, for example with "
    "a current docker, skopeo or crane"
)

# Content-Types that say nothing about which manifest kind a body is. Registries send
# these for manifests now and then; the document's own mediaType decides instead.
_GENERIC_TYPES: Final = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream"}
)

_Kind = Literal["manifest", "index"]


def _annotations(obj: Mapping[str, Any], what: str) -> dict[str, str]:
    return str_map(obj.get("annotations"), f"{what} annotations")


def _descriptor(obj: Any, what: str) -> Descriptor:
    try:
        return Descriptor.from_json(obj)
    except MalformedDocument as e:
        raise MalformedDocument(f"{what}: {e}") from None


def _descriptors(obj: Mapping[str, Any], key: str, what: str) -> tuple[Descriptor, ...]:
    if key not in obj:
        raise MalformedDocument(f"{what}: missing required {key!r}")
    items = opt_list(obj, key, what)
    if items is None:
        raise MalformedDocument(f"{what}: {key!r} must be a list, not null")
    return tuple(_descriptor(d, f"{what} {key}[{i}]") for i, d in enumerate(items))


def _subject(obj: Mapping[str, Any], what: str) -> Descriptor | None:
    if obj.get("subject") is None:
        return None
    return _descriptor(obj["subject"], f"{what} subject")


def _is_schema1(obj: Mapping[str, Any], *types: str) -> bool:
    if any(MediaType(t).is_schema1() for t in types):
        return True
    sv = obj.get("schemaVersion")
    return (sv == 1 and not isinstance(sv, bool)) or "fsLayers" in obj


def _kind_of(mt: MediaType) -> _Kind:
    if mt.is_index():
        return "index"
    if mt.is_manifest():
        return "manifest"
    raise Unsupported(f"media type {mt!r} is not an image manifest or index")


def _check(raw: bytes, media_type: str | None) -> tuple[_Kind, MediaType | None, dict[str, Any]]:
    """Steps 1-5 of the module docstring; returns kind, declared media type, JSON."""
    if media_type is not None and not isinstance(media_type, str):
        raise InvalidArgument(f"media_type must be a string, not {type(media_type).__name__}")
    obj = load_object(raw, "image manifest")
    given = MediaType(media_type or "")
    if given.base in _GENERIC_TYPES:
        given = MediaType("")
    own_raw = obj.get("mediaType")
    if own_raw is not None and not isinstance(own_raw, str):
        raise MalformedDocument("manifest 'mediaType' must be a string")
    own = MediaType(own_raw or "")
    if _is_schema1(obj, given, own):
        raise Unsupported(SCHEMA1_MESSAGE)
    if given and own and given.base != own.base:
        raise MalformedDocument(
            f"document says mediaType {str(own)!r} but was served as {str(given)!r}"
        )
    declared = own or given or None
    kind: _Kind
    if declared is not None:
        kind = _kind_of(declared)
    elif obj.get("manifests") is not None:
        kind = "index"
    elif obj.get("config") is not None or obj.get("layers") is not None:
        kind = "manifest"
    else:
        raise MalformedDocument("document is neither an image manifest nor an index")
    # CVE-2021-41190: a document must not carry the other kind's fields.
    if kind == "manifest" and obj.get("manifests") is not None:
        raise MalformedDocument("media type is a manifest but the document has 'manifests'")
    if kind == "index" and (obj.get("config") is not None or obj.get("layers") is not None):
        raise MalformedDocument("media type is an index but the document has 'config'/'layers'")
    sv = obj.get("schemaVersion")
    if isinstance(sv, bool) or sv != 2:
        raise MalformedDocument(f"{kind}: schemaVersion must be 2, not {sv!r}")
    return kind, declared, obj


def _document_bytes(
    mt: MediaType,
    artifact_type: str,
    body: Mapping[str, Any],
    subject: Descriptor | None,
    annotations: Mapping[str, str] | None,
) -> bytes:
    """Canonical compact JSON of a new document: schemaVersion, mediaType, artifactType,
    then ``body`` (config and layers, or manifests), subject, annotations; empty optional
    fields left out. Same inputs, same bytes, same digest."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": str(mt)}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc.update(body)
    if subject is not None:
        doc["subject"] = subject.to_json()
    if annotations:
        doc["annotations"] = dict(annotations)
    return dump_compact(doc)


class _Document(Record):
    """What a manifest and an index share: the fields around their descriptors, the
    bytes they were parsed from and their digest (which is also their hash).

    Frozen values: equal when every field is (so when ``raw`` is), hashed by ``digest``,
    shown without ``annotations`` and ``raw``.
    """

    # declared as any tuple: Manifest and Index add their own fields
    _fields: ClassVar[tuple[str, ...]] = (
        "media_type",
        "annotations",
        "subject",
        "artifact_type",
        "raw",
        "digest",
    )
    _repr_fields: ClassVar[tuple[str, ...]] = ("media_type", "subject", "artifact_type", "digest")

    media_type: MediaType
    annotations: Mapping[str, str]
    subject: Descriptor | None
    artifact_type: str
    raw: bytes
    digest: Digest

    def __init__(  # noqa: PLR0917 (the dataclass it was took its fields positionally)
        self,
        media_type: MediaType,
        annotations: Mapping[str, str],
        subject: Descriptor | None,
        artifact_type: str,
        raw: bytes,
        digest: Digest,
    ) -> None:
        _set(self, "media_type", media_type)
        _set(self, "annotations", annotations)
        _set(self, "subject", subject)
        _set(self, "artifact_type", artifact_type)
        _set(self, "raw", raw)
        _set(self, "digest", digest)

    def __hash__(self) -> int:
        return hash(self.digest)

    def descriptor(self) -> Descriptor:
        """A descriptor of this document (media type, digest, size of ``raw``)."""
        return Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.raw))

    def is_docker(self) -> bool:
        """True for a Docker schema 2 document (manifest or manifest list), False for OCI."""
        return self.media_type.is_docker()


class Manifest(_Document):
    """An image manifest (OCI or Docker schema 2), with the bytes it came from.

    Build one with :meth:`build` or :func:`parse_manifest`; the fields are then consistent
    with ``raw``, and ``digest`` is the sha256 of ``raw``. Equal manifests have equal raw
    bytes; the hash is the digest's.
    """

    __match_args__ = (
        "media_type",
        "annotations",
        "subject",
        "artifact_type",
        "raw",
        "digest",
        "config",
        "layers",
    )
    _fields = __match_args__
    _repr_fields = (*_Document._repr_fields, "config", "layers")

    config: Descriptor
    layers: tuple[Descriptor, ...]

    def __init__(  # noqa: PLR0917 (the dataclass it was took its fields positionally)
        self,
        media_type: MediaType,
        annotations: Mapping[str, str],
        subject: Descriptor | None,
        artifact_type: str,
        raw: bytes,
        digest: Digest,
        config: Descriptor,
        layers: tuple[Descriptor, ...],
    ) -> None:
        super().__init__(media_type, annotations, subject, artifact_type, raw, digest)
        _set(self, "config", config)
        _set(self, "layers", layers)

    def replace(
        self,
        *,
        media_type: MediaType = NOT_GIVEN,
        annotations: Mapping[str, str] = NOT_GIVEN,
        subject: Descriptor | None = NOT_GIVEN,
        artifact_type: str = NOT_GIVEN,
        raw: bytes = NOT_GIVEN,
        digest: Digest = NOT_GIVEN,
        config: Descriptor = NOT_GIVEN,
        layers: tuple[Descriptor, ...] = NOT_GIVEN,
    ) -> Manifest:
        """A copy with the given fields changed. Nothing re-serialises ``raw`` or checks
        ``digest``: to change what a manifest says, :meth:`build` a new one."""
        return self._replaced(
            media_type=media_type,
            annotations=annotations,
            subject=subject,
            artifact_type=artifact_type,
            raw=raw,
            digest=digest,
            config=config,
            layers=layers,
        )

    @classmethod
    def build(
        cls,
        config: Descriptor,
        layers: Sequence[Descriptor],
        *,
        media_type: MediaType = OCI_MANIFEST,
        annotations: Mapping[str, str] | None = None,
        subject: Descriptor | None = None,
        artifact_type: str = "",
    ) -> Manifest:
        """A new manifest serialised as canonical compact JSON.

        Keys in the order schemaVersion, mediaType, artifactType, config, layers, subject,
        annotations; empty optional fields left out. Same inputs, same bytes, same digest.
        InvalidArgument if ``media_type`` is not a manifest type.
        """
        mt = MediaType(media_type)
        if not mt.is_manifest():
            raise InvalidArgument(f"{mt!r} is not a manifest media type")
        body = {"config": config.to_json(), "layers": [d.to_json() for d in layers]}
        return parse_manifest(_document_bytes(mt, artifact_type, body, subject, annotations))

    def children(self) -> tuple[Descriptor, ...]:
        """What this manifest references, config first, then the layers in order."""
        return (self.config, *self.layers)


class Index(_Document):
    """An image index (OCI) or manifest list (Docker schema 2), with its bytes."""

    __match_args__ = (
        "media_type",
        "annotations",
        "subject",
        "artifact_type",
        "raw",
        "digest",
        "manifests",
    )
    _fields = __match_args__
    _repr_fields = (*_Document._repr_fields, "manifests")

    manifests: tuple[Descriptor, ...]

    def __init__(  # noqa: PLR0917 (the dataclass it was took its fields positionally)
        self,
        media_type: MediaType,
        annotations: Mapping[str, str],
        subject: Descriptor | None,
        artifact_type: str,
        raw: bytes,
        digest: Digest,
        manifests: tuple[Descriptor, ...],
    ) -> None:
        super().__init__(media_type, annotations, subject, artifact_type, raw, digest)
        _set(self, "manifests", manifests)

    def replace(
        self,
        *,
        media_type: MediaType = NOT_GIVEN,
        annotations: Mapping[str, str] = NOT_GIVEN,
        subject: Descriptor | None = NOT_GIVEN,
        artifact_type: str = NOT_GIVEN,
        raw: bytes = NOT_GIVEN,
        digest: Digest = NOT_GIVEN,
        manifests: tuple[Descriptor, ...] = NOT_GIVEN,
    ) -> Index:
        """A copy with the given fields changed; as with :meth:`Manifest.replace`, ``raw``
        and ``digest`` stay as they are unless given."""
        return self._replaced(
            media_type=media_type,
            annotations=annotations,
            subject=subject,
            artifact_type=artifact_type,
            raw=raw,
            digest=digest,
            manifests=manifests,
        )

    @classmethod
    def build(
        cls,
        manifests: Sequence[Descriptor],
        *,
        media_type: MediaType = OCI_INDEX,
        annotations: Mapping[str, str] | None = None,
        subject: Descriptor | None = None,
        artifact_type: str = "",
    ) -> Index:
        """A new index serialised as canonical compact JSON.

        Keys in the order schemaVersion, mediaType, artifactType, manifests, subject,
        annotations; empty optional fields left out. InvalidArgument if ``media_type`` is
        not an index type.
        """
        mt = MediaType(media_type)
        if not mt.is_index():
            raise InvalidArgument(f"{mt!r} is not an index media type")
        body = {"manifests": [d.to_json() for d in manifests]}
        return parse_index(_document_bytes(mt, artifact_type, body, subject, annotations))

    def children(self) -> tuple[Descriptor, ...]:
        """The entries of ``manifests``, in order."""
        return self.manifests

    def for_platform(self, want: Platform, *, strict: bool = False) -> tuple[Descriptor, ...]:
        """Entries an image for ``want`` may use, best first.

        Entries whose platform matches (see :class:`PlatformMatcher`) come first, ordered
        by preference and then by position; entries without a platform come last, in
        position order, as containerd's ``FilterPlatforms`` keeps them. Entries with a
        platform that does not match are left out. Empty if nothing fits.
        """
        m = PlatformMatcher(want, strict=strict)
        ranked: list[tuple[int, int, Descriptor]] = []
        tail: list[Descriptor] = []
        for i, d in enumerate(self.manifests):
            if d.platform is None:
                tail.append(d)
            elif (r := m.rank(d.platform)) is not None:
                ranked.append((r, i, d))
        ranked.sort(key=lambda t: (t[0], t[1]))
        return (*(d for _, _, d in ranked), *tail)


def _shared(raw: bytes, obj: dict[str, Any], what: str) -> dict[str, Any]:
    """The _Document fields of a checked document."""
    return {
        "annotations": _annotations(obj, what),
        "subject": _subject(obj, what),
        "artifact_type": opt_str(obj, "artifactType", what),
        "raw": raw,
        "digest": Digest.from_bytes(raw),
    }


def _manifest_from(raw: bytes, declared: MediaType | None, obj: dict[str, Any]) -> Manifest:
    if "config" not in obj:
        raise MalformedDocument("manifest: missing required 'config'")
    return Manifest(
        media_type=declared if declared is not None else OCI_MANIFEST,
        config=_descriptor(obj["config"], "manifest config"),
        layers=_descriptors(obj, "layers", "manifest"),
        **_shared(raw, obj, "manifest"),
    )


def _index_from(raw: bytes, declared: MediaType | None, obj: dict[str, Any]) -> Index:
    return Index(
        media_type=declared if declared is not None else OCI_INDEX,
        manifests=_descriptors(obj, "manifests", "index"),
        **_shared(raw, obj, "index"),
    )


def parse_manifest(raw: BytesLike, media_type: str | None = None) -> Manifest:
    """Parse an image manifest; ``media_type`` is what the bytes were served as, if known.

    Raises ResourceLimit, MalformedDocument or Unsupported as the module docstring says;
    MalformedDocument also if the document is an index.
    """
    data = as_bytes(raw, "manifest")
    kind, declared, obj = _check(data, media_type)
    if kind != "manifest":
        raise MalformedDocument(f"expected an image manifest, got an index ({declared})")
    return _manifest_from(data, declared, obj)


def parse_index(raw: BytesLike, media_type: str | None = None) -> Index:
    """Parse an image index or manifest list; errors as :func:`parse_manifest`."""
    data = as_bytes(raw, "index")
    kind, declared, obj = _check(data, media_type)
    if kind != "index":
        raise MalformedDocument(f"expected an image index, got a manifest ({declared})")
    return _index_from(data, declared, obj)


def parse_document(raw: BytesLike, media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index, whichever it is (see the module docstring, step 4)."""
    data = as_bytes(raw, "manifest")
    kind, declared, obj = _check(data, media_type)
    if kind == "index":
        return _index_from(data, declared, obj)
    return _manifest_from(data, declared, obj)
