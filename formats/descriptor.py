"""Descriptors: what points at a blob (media type, digest, size, and optional extras)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._record import NOT_GIVEN, Record, _set
from .digest import Digest
from .errors import DigestMismatch, InvalidDigest, MalformedDocument
from .mediatype import MediaType
from .platform import Platform

__all__ = ["Descriptor", "str_map"]


def str_map(obj: Any, what: str) -> dict[str, str]:
    """Validate a JSON object of string values (annotations, labels)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in obj.items()
    ):
        raise MalformedDocument(f"{what} must be an object of strings")
    return dict(obj)


class Descriptor(Record):
    """An OCI content descriptor.

    A frozen value (equality, repr, pickling as a frozen dataclass's; unhashable while
    ``annotations`` is a dict). ``annotations`` is a read-only mapping in practice: build a
    changed copy with :meth:`replace`.
    """

    __slots__ = (
        "annotations",
        "artifact_type",
        "data",
        "digest",
        "media_type",
        "platform",
        "size",
        "urls",
    )
    __match_args__ = (
        "media_type",
        "digest",
        "size",
        "urls",
        "annotations",
        "platform",
        "artifact_type",
        "data",
    )
    _fields = __match_args__

    media_type: MediaType
    digest: Digest
    size: int
    urls: tuple[str, ...]
    annotations: Mapping[str, str]
    platform: Platform | None
    artifact_type: str
    data: bytes | None

    def __init__(  # noqa: PLR0917 (the dataclass it was took its fields positionally)
        self,
        media_type: MediaType,
        digest: Digest,
        size: int,
        urls: tuple[str, ...] = (),
        annotations: Mapping[str, str] = NOT_GIVEN,  # a new dict
        platform: Platform | None = None,
        artifact_type: str = "",
        data: bytes | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MalformedDocument(f"descriptor {digest}: invalid size {size!r}")
        # callers may pass a plain str; keep the predicates available whatever they pass
        mt: object = media_type
        if not isinstance(mt, MediaType):
            media_type = MediaType(str(mt))
        _set(self, "media_type", media_type)
        _set(self, "digest", digest)
        _set(self, "size", size)
        _set(self, "urls", urls)
        _set(self, "annotations", {} if annotations is NOT_GIVEN else annotations)
        _set(self, "platform", platform)
        _set(self, "artifact_type", artifact_type)
        _set(self, "data", data)

    def replace(
        self,
        *,
        media_type: MediaType = NOT_GIVEN,
        digest: Digest = NOT_GIVEN,
        size: int = NOT_GIVEN,
        urls: tuple[str, ...] = NOT_GIVEN,
        annotations: Mapping[str, str] = NOT_GIVEN,
        platform: Platform | None = NOT_GIVEN,
        artifact_type: str = NOT_GIVEN,
        data: bytes | None = NOT_GIVEN,
    ) -> Descriptor:
        """A copy with the given fields changed, validated as a new descriptor is."""
        return self._replaced(
            media_type=media_type,
            digest=digest,
            size=size,
            urls=urls,
            annotations=annotations,
            platform=platform,
            artifact_type=artifact_type,
            data=data,
        )

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        """Validate and build a descriptor from parsed JSON; MalformedDocument if wrong."""
        if not isinstance(obj, dict):
            raise MalformedDocument("descriptor must be an object")
        mt = obj.get("mediaType")
        if not isinstance(mt, str) or not mt:
            raise MalformedDocument("descriptor needs a 'mediaType' string")
        try:
            dg = Digest.parse(obj.get("digest"))  # type: ignore[arg-type]
        except InvalidDigest as e:
            raise MalformedDocument(f"descriptor of {mt}: {e}") from None
        size = obj.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MalformedDocument(f"descriptor {dg}: size must be a non-negative integer")
        urls = obj.get("urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise MalformedDocument(f"descriptor {dg}: 'urls' must be a list of strings")
        platform = Platform.from_json(obj["platform"]) if "platform" in obj else None
        art = obj.get("artifactType", "")
        if not isinstance(art, str):
            raise MalformedDocument(f"descriptor {dg}: 'artifactType' must be a string")
        data: bytes | None = None
        if "data" in obj:
            import base64  # noqa: PLC0415 (start-up: few descriptors embed data)
            import binascii  # noqa: PLC0415

            if not isinstance(obj["data"], str):
                raise MalformedDocument(f"descriptor {dg}: 'data' must be base64 text")
            try:
                data = base64.b64decode(obj["data"], validate=True)
            except binascii.Error:
                raise MalformedDocument(f"descriptor {dg}: 'data' is not base64") from None
            if len(data) != size or Digest.from_bytes(data, dg.algorithm) != dg:
                raise DigestMismatch(f"descriptor {dg}: embedded data does not match")
        return cls(
            media_type=MediaType(mt),
            digest=dg,
            size=size,
            urls=tuple(urls),
            annotations=str_map(obj.get("annotations"), f"descriptor {dg} annotations"),
            platform=platform,
            artifact_type=art,
            data=data,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": str(self.media_type),
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.data is not None:
            import base64  # noqa: PLC0415

            out["data"] = base64.b64encode(self.data).decode()
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out
