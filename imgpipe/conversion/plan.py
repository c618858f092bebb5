"""The plan of one conversion: the source image walked, and what becomes of each blob.

:class:`Planner` reads the source's documents (verified) and returns a tree of
:class:`ManifestNode` / :class:`IndexNode`: the index entries kept (platforms asked,
present in the source), each manifest's target media types and one :class:`LayerPlan`
per layer. Encrypted layers are checked against the keys here, before any byte moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imgpipe.formats.config import parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument, NotFound
from imgpipe.formats.manifest import Index, Manifest, parse_document
from imgpipe.formats.mediatype import DOCKER_CONFIG, OCI_CONFIG, MediaType
from imgpipe.formats.platform import Platform, PlatformMatcher

from .layers import LayerKind, LayerPlan
from .options import ConvertOptions
from .sources import Source

__all__ = ["BlobKey", "IndexNode", "ManifestNode", "Node", "Planner", "blob_key"]

BlobKey = tuple[Any, ...]


@dataclass
class ManifestNode:
    desc: Descriptor
    manifest: Manifest
    oci: bool
    config_type: MediaType
    layers: list[LayerPlan]
    out: Descriptor | None = None
    raw: bytes = b""


@dataclass
class IndexNode:
    desc: Descriptor
    index: Index
    children: list[tuple[Descriptor, ManifestNode | IndexNode]]
    oci: bool = False
    out: Descriptor | None = None
    raw: bytes = b""


Node = ManifestNode | IndexNode


def blob_key(plan: LayerPlan) -> BlobKey:
    """What makes two plans the same work (a layer shared by two manifests runs once)."""
    return (
        str(plan.source.digest),
        plan.target_type.base,
        plan.decrypt,
        plan.recompress,
        plan.compression,
        plan.encrypt,
    )


class Planner:
    """Plans the conversion of ``source`` as ``spec`` says."""

    def __init__(self, source: Source, spec: ConvertOptions) -> None:
        self.source = source
        self.spec = spec

    def plan(self, desc: Descriptor, depth: int = 0) -> Node:
        if depth > 8:
            raise InvalidArgument(f"image index nesting deeper than 8 at {desc.digest}")
        doc = parse_document(self.source.document(desc), desc.media_type)
        if isinstance(doc, Manifest):
            return self._plan_manifest(desc, doc)
        children: list[tuple[Descriptor, Node]] = []
        for entry in doc.manifests:
            if not (entry.media_type.is_index() or entry.media_type.is_manifest()):
                continue  # an artifact blob listed in an index: not ours to convert
            if not self.source.present(entry):
                continue  # a platform the store never pulled
            if self.spec.platforms and entry.platform is not None:
                wanted = self.spec.platforms
                assert all(isinstance(p, Platform) for p in wanted)
                if not any(
                    PlatformMatcher(p, strict=True).match(entry.platform)  # type: ignore[arg-type]
                    for p in wanted
                ):
                    continue
            children.append((entry, self.plan(entry, depth + 1)))
        if not children:
            want = ", ".join(str(p) for p in self.spec.platforms) or "any"
            raise NotFound(f"{self.source.name}: index {desc.digest} has no manifest for {want}")
        oci = self.spec.oci or not doc.media_type.is_docker() or any(n.oci for _, n in children)
        return IndexNode(desc, doc, children, oci)

    def _plan_manifest(self, desc: Descriptor, m: Manifest) -> ManifestNode:
        spec = self.spec
        n = len(m.layers)
        selected: set[int] | None = None
        if spec.encrypt_layers is not None:
            selected = set()
            for i in spec.encrypt_layers:
                if not -n <= i < n:
                    raise InvalidArgument(f"encrypt layer {i}: manifest {m.digest} has {n} layers")
                selected.add(i % n)
        kinds: list[tuple[LayerKind | None, LayerKind | None, bool, bool]] = []
        for i, layer in enumerate(m.layers):
            kinds.append(self._layer_kind(i, layer, m, selected))
        oci = (
            spec.oci
            or not m.media_type.is_docker()
            or any(out is not None and out.needs_oci() for _, out, _, _ in kinds)
        )
        need_diff_ids = any(
            k_in is not None and k_out is not None and k_in.compression != k_out.compression
            for k_in, k_out, _, _ in kinds
        )
        diff_ids: tuple[Digest, ...] = ()
        if need_diff_ids and m.config.media_type.is_config():
            config = parse_config(self.source.document(m.config))
            if len(config.diff_ids) != n:
                raise InvalidArgument(
                    f"{self.source.name}: manifest {m.digest} has {n} layers, its config "
                    f"{len(config.diff_ids)} DiffIDs"
                )
            diff_ids = config.diff_ids
        plans = []
        for i, (layer, (k_in, k_out, decrypt, encrypt)) in enumerate(
            zip(m.layers, kinds, strict=True)
        ):
            if k_in is None or k_out is None:
                plans.append(LayerPlan(layer, layer.media_type))
                continue
            recompress = k_in.compression != k_out.compression
            plans.append(
                LayerPlan(
                    layer,
                    k_out.media_type(oci=oci),
                    decrypt=decrypt,
                    recompress=recompress,
                    compression=k_out.compression,
                    encrypt=encrypt,
                    diff_id=diff_ids[i] if recompress and diff_ids else None,
                )
            )
        config_type = m.config.media_type
        if oci and config_type.base == DOCKER_CONFIG:
            config_type = OCI_CONFIG
        return ManifestNode(desc, m, oci, config_type, plans)

    def _layer_kind(
        self, i: int, layer: Descriptor, m: Manifest, selected: set[int] | None
    ) -> tuple[LayerKind | None, LayerKind | None, bool, bool]:
        """(kind in, kind out, decrypt, encrypt) of layer ``i``; out None = untouched."""
        spec = self.spec
        k_in = LayerKind.parse(layer.media_type)
        if k_in is None:
            return None, None, False, False
        want_enc = bool(spec.recipients) and (selected is None or i in selected)
        comp = k_in.compression
        if spec.compression is not None:
            comp = "" if spec.compression == "none" else spec.compression
        decrypt = False
        if k_in.encrypted:
            if spec.decrypt_keys:
                from imgpipe.processors.ocicrypt import check_authorization  # noqa: PLC0415

                # unwrap only, before any byte moves: a wrong key fails fast
                check_authorization(layer.annotations, keys=spec.decrypt_keys)
                decrypt = True
            elif want_enc or comp != k_in.compression:
                from imgpipe.processors.ocicrypt import NoDecryptionKey  # noqa: PLC0415

                why = "re-encrypt" if want_enc else "recompress"
                raise NoDecryptionKey(
                    f"layer {i} ({layer.digest}) of manifest {m.digest} is encrypted: "
                    f"give a decryption key to {why} it"
                )
            else:
                return k_in, k_in, False, False  # stays as it is
        encrypt = want_enc
        out = LayerKind(
            k_in.family, k_in.nondistributable, comp, encrypt or (k_in.encrypted and not decrypt)
        )
        return k_in, out, decrypt, encrypt

    def tasks(self, node: Node) -> Iterator[tuple[BlobKey, LayerPlan]]:
        """Every blob of ``node``'s manifests (configs and layers), with its key."""
        if isinstance(node, IndexNode):
            for _, child in node.children:
                yield from self.tasks(child)
            return
        cfg = node.manifest.config
        yield ("config", str(cfg.digest), node.config_type.base), LayerPlan(cfg, node.config_type)
        for plan in node.layers:
            yield blob_key(plan), plan
