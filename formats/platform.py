"""Platforms: ``os/arch[/variant]``, normalised the way containerd does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import MalformedDocument

__all__ = ["Platform"]


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform. Field names follow Python; JSON names follow the spec."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = field(default=())

    @classmethod
    def from_json(cls, obj: Any) -> Platform:
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
