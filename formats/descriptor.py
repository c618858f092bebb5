"""Descriptors: what points at a blob (media type, digest, size, and optional extras)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor.

    ``annotations`` is a read-only mapping in practice: treat a Descriptor as a value and
    build a new one with ``dataclasses.replace`` to change it.
    """

    media_type: MediaType
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str = ""
    data: bytes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise MalformedDocument(f"descriptor {self.digest}: invalid size {self.size!r}")
        # callers may pass a plain str; keep the predicates available whatever they pass
        mt: object = self.media_type
        if not isinstance(mt, MediaType):
            object.__setattr__(self, "media_type", MediaType(str(mt)))

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
