"""What a conversion did: :class:`ConvertReport`, the JSON ``--report FILE`` writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from imgpipe.formats.descriptor import Descriptor

__all__ = ["Action", "BlobInfo", "ConvertReport", "LayerReport", "ManifestReport"]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A descriptor's essentials, for the report."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, desc: Descriptor) -> BlobInfo:
        return cls(str(desc.media_type), str(desc.digest), desc.size)

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


Action = Literal["converted", "copied", "exists", "mounted"]


@dataclass(frozen=True, slots=True)
class LayerReport:
    """One layer of one manifest: before, after, and what was done.

    ``action``: "converted" (through processors), "copied" (bytes unchanged, uploaded),
    "exists" (the destination had it) or "mounted" (from another repository).
    ``diff_id`` is set when the layer was decoded (and then checked against the config);
    ``source_diff_id`` when the layer's tar changed (eStargz): it was the source's DiffID,
    ``diff_id`` is the new one, in the rewritten config. ``seekable``: the format written.
    """

    manifest: str
    index: int
    before: BlobInfo
    after: BlobInfo
    action: Action
    seconds: float
    diff_id: str = ""
    source_diff_id: str = ""
    seekable: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {
            "manifest": self.manifest,
            "index": self.index,
            "action": self.action,
            "seconds": round(self.seconds, 6),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }
        if self.diff_id:
            out["diffID"] = self.diff_id
        if self.source_diff_id:
            out["sourceDiffID"] = self.source_diff_id
            out["diffIDChanged"] = True
        if self.seekable:
            out["format"] = self.seekable
        return out


@dataclass(frozen=True, slots=True)
class ManifestReport:
    """One image manifest, before and after; ``platform`` from the index entry, if any;
    ``config``: the new config when it was rewritten (new DiffIDs)."""

    platform: str
    before: BlobInfo
    after: BlobInfo
    config: BlobInfo | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "platform": self.platform,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }
        if self.config is not None:
            out["config"] = self.config.to_json()
        return out


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did; ``to_json()`` is what ``--report FILE`` writes."""

    source: str
    destination: str
    before: BlobInfo
    after: BlobInfo
    manifests: tuple[ManifestReport, ...]
    layers: tuple[LayerReport, ...]
    seconds: float

    @property
    def source_digest(self) -> str:
        return self.before.digest

    @property
    def destination_digest(self) -> str:
        return self.after.digest

    def totals(self) -> dict[str, Any]:
        """Counts by action, bytes before and after (each blob once), seconds."""
        seen: dict[str, LayerReport] = {}
        for layer in self.layers:
            seen.setdefault(layer.before.digest + layer.after.digest, layer)
        unique = list(seen.values())
        out: dict[str, Any] = {"layers": len(self.layers)}
        for action in ("converted", "copied", "exists", "mounted"):
            out[action] = sum(1 for r in unique if r.action == action)
        out["bytesBefore"] = sum(r.before.size for r in unique)
        out["bytesAfter"] = sum(r.after.size for r in unique)
        out["layerSeconds"] = round(sum(r.seconds for r in unique), 6)
        out["seconds"] = round(self.seconds, 6)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "sourceDigest": self.before.digest,
            "destinationDigest": self.after.digest,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "manifests": [m.to_json() for m in self.manifests],
            "layers": [layer.to_json() for layer in self.layers],
            "totals": self.totals(),
        }
