"""The documents of a converted image, written children first once every blob is in.

A manifest or index whose descriptors did not change keeps its bytes; one that changed
is the original JSON with the new descriptors merged in (unknown fields kept), written
compactly in the order read, so the same input gives the same digests. The config is
kept too, unless a layer's tar changed (eStargz adds landmark and TOC entries): then it
is the original JSON with the new ``rootfs.diff_ids``, as containerd's converter writes
it, and the manifest points at that.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from typing import Any

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.mediatype import OCI_INDEX, OCI_MANIFEST
from imgpipe.metadata.labels import index_child_labels, manifest_child_labels
from imgpipe.pipeline.context import Context, Stage

from .destinations import Destination
from .flow import Mapped, Result
from .layers import LayerPlan
from .plan import BlobKey, ManifestNode, Node, blob_key, config_rewritten
from .report import BlobInfo, ConvertReport, LayerReport, ManifestReport

__all__ = ["DocumentWriter", "Write"]


def _json_bytes(obj: Any) -> bytes:
    # Compact, key order as read: a function of the input, so conversions reproduce.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _merge_desc(orig: Mapping[str, Any], new: Descriptor) -> dict[str, Any]:
    """The original descriptor object with the new one's fields (unknown fields kept)."""
    out = {k: v for k, v in orig.items() if k != "annotations"}
    out.update(new.to_json())
    return out


def _annotated(obj: dict[str, Any], annotations: Mapping[str, str]) -> dict[str, Any]:
    """``obj`` with ``annotations`` merged over its own (ours win: they say what we did)."""
    return {**obj, "annotations": {**obj.get("annotations", {}), **annotations}}


class DocumentWriter:
    """Writes a planned tree's documents into ``dest`` from the blobs' ``results``;
    collects the report's manifest and layer entries on the way. ``annotations`` go on
    the root document when it is OCI (a Docker document has no such field)."""

    def __init__(
        self,
        dest: Destination,
        results: Mapping[BlobKey, Result],
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        self.dest = dest
        self.results = results
        self.annotations = dict(annotations or {})
        self.layer_reports: list[LayerReport] = []
        self.manifest_reports: list[ManifestReport] = []

    def write(self, node: Node, *, root: bool = True) -> Descriptor:
        """Write ``node``'s documents children first; its new descriptor."""
        extra = self.annotations if root else {}
        if isinstance(node, ManifestNode):
            return self._write_manifest(node, extra)
        entries: list[Descriptor] = []
        for entry, child in node.children:
            out = self.write(child, root=False)
            entries.append(
                entry.replace(media_type=out.media_type, digest=out.digest, size=out.size)
            )
        idx = node.index
        media_type = OCI_INDEX if node.oci else idx.media_type
        kept = [e for e, _ in node.children]
        unchanged = media_type == idx.media_type and entries == list(idx.manifests)
        extra = extra if media_type == OCI_INDEX else {}
        if unchanged and kept == list(idx.manifests) and not extra:
            raw = idx.raw
        else:
            obj = json.loads(idx.raw)
            originals = {
                str(d.digest): o for d, o in zip(idx.manifests, obj["manifests"], strict=True)
            }
            obj["manifests"] = [
                _merge_desc(originals[str(old.digest)], new)
                for (old, _), new in zip(node.children, entries, strict=True)
            ]
            if "mediaType" in obj or media_type != idx.media_type:
                obj["mediaType"] = str(media_type)
            raw = _json_bytes(_annotated(obj, extra) if extra else obj)
        out = Descriptor(media_type=media_type, digest=Digest.from_bytes(raw), size=len(raw))
        self.dest.write_document(out, raw, index_child_labels(entries))
        node.out, node.raw = out, raw
        return out

    def _write_manifest(self, node: ManifestNode, extra: Mapping[str, str]) -> Descriptor:
        m = node.manifest
        if not config_rewritten(node):
            # the source config was copied: the lookup asserts it was written
            assert ("config", str(m.config.digest), node.config_type.base) in self.results
        config = m.config.replace(media_type=node.config_type)
        layers: list[Descriptor] = []
        done: list[Result] = []
        for i, plan in enumerate(node.layers):
            res = self.results[blob_key(plan)]
            layers.append(res.desc)
            done.append(res)
            self.layer_reports.append(
                LayerReport(
                    manifest=str(m.digest),
                    index=i,
                    before=BlobInfo.of(plan.source),
                    after=BlobInfo.of(res.desc),
                    action=res.action,
                    seconds=res.seconds,
                    diff_id=res.diff_id,
                    source_diff_id=_changed(res),
                    seekable=_seekable(plan),
                )
            )
        config, rewritten = self._config(node, config, done)
        if config_rewritten(node) and not rewritten:
            raise AssertionError(f"manifest {m.digest}: an eStargz layer kept its DiffID")
        media_type = OCI_MANIFEST if node.oci else m.media_type
        unchanged = media_type == m.media_type and config == m.config and layers == list(m.layers)
        extra = extra if media_type == OCI_MANIFEST else {}
        if unchanged and not extra:
            raw = m.raw
        else:
            obj = json.loads(m.raw)
            obj["mediaType"] = str(media_type)
            obj["config"] = _merge_desc(obj["config"], config)
            obj["layers"] = [
                _merge_desc(o, new) for o, new in zip(obj["layers"], layers, strict=True)
            ]
            raw = _json_bytes(_annotated(obj, extra) if extra else obj)
        out = Descriptor(media_type=media_type, digest=Digest.from_bytes(raw), size=len(raw))
        self.dest.write_document(out, raw, manifest_child_labels(config, layers))
        node.out, node.raw = out, raw
        platform = node.desc.platform
        self.manifest_reports.append(
            ManifestReport(
                str(platform) if platform is not None else "",
                BlobInfo.of(node.desc),
                BlobInfo.of(out),
                config=BlobInfo.of(config) if rewritten else None,
            )
        )
        return out

    def _config(
        self, node: ManifestNode, config: Descriptor, results: list[Result]
    ) -> tuple[Descriptor, bool]:
        """``config``, or a new config with the new DiffIDs when a layer's tar changed."""
        changed = {i: r.diff_id for i, r in enumerate(results) if _changed(r)}
        if not changed or not node.manifest.config.media_type.is_config():
            return config, False
        obj = json.loads(node.image.config().raw)  # read (verified) once by the plan
        diff_ids = list(obj["rootfs"]["diff_ids"])
        for i, diff_id in changed.items():
            diff_ids[i] = diff_id
        obj["rootfs"]["diff_ids"] = diff_ids
        raw = _json_bytes(obj)
        out = config.replace(digest=Digest.from_bytes(raw), size=len(raw))
        if not self.dest.has_blob(out):  # a re-run finds it (and the store protects it)
            self.dest.copy_blob(out, io.BytesIO(raw))  # a blob, not a manifest
        return out, True


def _changed(res: Result) -> str:
    """The source tar's DiffID when the layer's tar changed (the config must follow)."""
    if res.source_diff_id and res.diff_id and res.diff_id != res.source_diff_id:
        return res.source_diff_id
    return ""


def _seekable(plan: LayerPlan) -> str:
    """The seekable format the layer was written in, or ""."""
    return plan.seekable.format if plan.recompress and plan.seekable is not None else ""


class Write(Stage[Mapped, ConvertReport]):
    """The stage ``Mapped -> ConvertReport``: the documents, children first, then the
    root (the tag, the local name) last, so nothing names a half-written image."""

    name = "write"

    def __init__(self, annotations: Mapping[str, str] | None = None) -> None:
        self.annotations = dict(annotations or {})

    def run(self, item: Mapped, ctx: Context) -> ConvertReport:
        ends = item.planned.ends
        writer = DocumentWriter(ends.dest, item.results, self.annotations)
        root_out = writer.write(item.planned.tree)
        ends.dest.write_root(root_out)
        return ConvertReport(
            source=ends.shown[0],
            destination=ends.shown[1],
            before=BlobInfo.of(ends.root),
            after=BlobInfo.of(root_out),
            manifests=tuple(writer.manifest_reports),
            layers=tuple(writer.layer_reports),
            seconds=time.monotonic() - ends.request.started,
        )
