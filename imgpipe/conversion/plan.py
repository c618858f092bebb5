"""The plan of one conversion: the ends opened, the source image walked, and what
becomes of each blob.

:class:`Resolve` opens both ends (closed when the conversion ends: the destination then
finishes, committing only on success). :class:`Planner` reads the source's documents
(verified) and returns a tree of :class:`ManifestNode` / :class:`IndexNode`: the index
entries kept (platforms asked, present in the source), each manifest's target media
types and one :class:`LayerPlan` per layer. Encrypted layers are checked against the keys
here, before any byte moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    InvalidArgument,
    MalformedDocument,
    NotFound,
    SizeMismatch,
)
from imgpipe.formats.manifest import Index, Manifest
from imgpipe.formats.mediatype import DOCKER_CONFIG, OCI_CONFIG, Compression, MediaType
from imgpipe.image import BlobImage, BlobIndex, BlobLayer, check_layer_keys, load, select
from imgpipe.image.keys import in_layer
from imgpipe.pipeline import Event, EventKind
from imgpipe.pipeline.context import Context, Stage
from imgpipe.processors.estargz_params import MANIFEST_CHECKSUM_ANNOTATION, TOC_DIGEST_ANNOTATION

if TYPE_CHECKING:
    from types import TracebackType

    from imgpipe.processors import ProcessorRegistry

from .flow import Ends, Opener, Planned, Request
from .layers import LayerKind, LayerPlan
from .options import ConvertOptions
from .sources import Source

__all__ = [
    "BlobKey",
    "IndexNode",
    "ManifestNode",
    "Node",
    "Planner",
    "Resolve",
    "blob_key",
    "config_rewritten",
]

BlobKey = tuple[Any, ...]

#: ConvertOptions.compression -> the layer's compression ("none" writes plain tars).
_COMPRESSIONS: Final[dict[str, Compression]] = {"gzip": "gzip", "zstd": "zstd", "none": ""}
#: ConvertOptions.seekable -> the compression that format uses.
_SEEKABLE_COMPRESSIONS: Final[dict[str, Compression]] = {"estargz": "gzip", "zstdchunked": "zstd"}


@dataclass
class ManifestNode:
    desc: Descriptor
    manifest: Manifest
    oci: bool
    config_type: MediaType
    layers: list[LayerPlan]
    image: BlobImage
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
        plan.seekable,
    )


def config_rewritten(node: ManifestNode) -> bool:
    """Whether ``node``'s config gets new DiffIDs: eStargz always changes the tar of a
    layer it writes (landmark and TOC entries), zstd:chunked keeps it byte for byte."""
    return node.manifest.config.media_type.is_config() and any(
        p.recompress and p.seekable is not None and p.seekable.format == "estargz"
        for p in node.layers
    )


class Planner:
    """Plans the conversion of ``source`` as ``spec`` says."""

    def __init__(
        self, source: Source, spec: ConvertOptions, registry: ProcessorRegistry | None = None
    ) -> None:
        self.source = source
        self.spec = spec
        self.registry = registry
        self.seekable = spec.seekable_params()

    def plan(self, desc: Descriptor) -> Node:
        """The plan of the image ``desc`` names (its documents read, verified)."""
        return self._node(self._load(desc, 0), 0)

    def _load(self, desc: Descriptor, depth: int) -> BlobImage | BlobIndex:
        # the model's load holds the one depth bound (MAX_INDEX_DEPTH)
        try:
            return load(self.source, desc, registry=self.registry, depth=depth)
        except (DigestMismatch, SizeMismatch) as e:
            raise in_layer(e, self.source.name) from None

    def _node(self, value: BlobImage | BlobIndex, depth: int) -> Node:
        if isinstance(value, BlobImage):
            return self._plan_manifest(value)
        doc = value.index
        children: list[tuple[Descriptor, Node]] = []
        entries = [
            e for e in doc.manifests if e.media_type.is_index() or e.media_type.is_manifest()
        ]
        # (an artifact blob listed in an index is not ours to convert)
        for entry in select.matching(entries, self.spec.platforms):  # type: ignore[arg-type]
            try:
                child = self._load(entry, depth + 1)
            except NotFound:
                if self.source.partial:
                    continue  # a platform the store never pulled
                raise
            children.append((entry, self._node(child, depth + 1)))
        if not children:
            want = ", ".join(str(p) for p in self.spec.platforms) or "any"
            raise NotFound(
                f"{self.source.name}: index {value.descriptor.digest} has no manifest for {want}"
            )
        oci = self.spec.oci or not doc.media_type.is_docker() or any(n.oci for _, n in children)
        return IndexNode(value.descriptor, doc, children, oci)

    def _plan_manifest(self, image: BlobImage) -> ManifestNode:
        spec = self.spec
        desc, m = image.descriptor, image.manifest
        n = len(m.layers)
        selected: set[int] | None = None
        if spec.encrypt_layers is not None:
            selected = set()
            for i in spec.encrypt_layers:
                if not -n <= i < n:
                    raise InvalidArgument(f"encrypt layer {i}: manifest {m.digest} has {n} layers")
                selected.add(i % n)
        if spec.decrypt_keys:
            # unwrap only, before any byte moves: a wrong key fails fast
            check_layer_keys(m.layers, spec.decrypt_keys)
        kinds = [self._layer_kind(i, layer, m, selected) for i, layer in enumerate(m.layers)]
        # only OCI descriptors carry the annotations eStargz and zstd:chunked layers need
        oci = (
            spec.oci
            or spec.seekable is not None
            or not m.media_type.is_docker()
            or any(out is not None and out.needs_oci() for _, out, _, _ in kinds)
        )
        need_diff_ids = any(
            k_in is not None and k_out is not None and self._recompress(layer, k_in, k_out)
            for layer, (k_in, k_out, _, _) in zip(m.layers, kinds, strict=True)
        )
        diff_ids: tuple[Digest, ...] = ()
        if need_diff_ids and m.config.media_type.is_config():
            try:
                diff_ids = image.config().diff_ids  # the count checked against the layers
            except (DigestMismatch, SizeMismatch, MalformedDocument) as e:
                raise in_layer(e, self.source.name) from None
        plans = []
        for i, (layer, (k_in, k_out, decrypt, encrypt)) in enumerate(
            zip(image.layers(), kinds, strict=True)
        ):
            if k_in is None or k_out is None:
                plans.append(LayerPlan(layer, layer.media_type))  # untouched
                continue
            recompress = self._recompress(layer.descriptor, k_in, k_out)
            plans.append(
                LayerPlan(
                    layer,
                    k_out.media_type(oci=oci),
                    decrypt=decrypt,
                    recompress=recompress,
                    compression=k_out.compression,
                    encrypt=encrypt,
                    diff_id=diff_ids[i] if recompress and diff_ids else None,
                    seekable=self.seekable,
                )
            )
        config_type = m.config.media_type
        if oci and config_type.base == DOCKER_CONFIG:
            config_type = OCI_CONFIG
        return ManifestNode(desc, m, oci, config_type, plans, image)

    def _recompress(self, layer: Descriptor, k_in: LayerKind, k_out: LayerKind) -> bool:
        """Whether the layer is decoded and written anew: a seekable format rewrites every
        layer it gets (the tar changes); otherwise a change of compression does, and so
        does an explicit ``compression`` of an eStargz / zstd:chunked layer (that is how
        one converts back to a plain stream; the tar, so the DiffID, stays)."""
        if self.seekable is not None or k_in.compression != k_out.compression:
            return True
        return self.spec.compression is not None and any(
            k in layer.annotations for k in (TOC_DIGEST_ANNOTATION, MANIFEST_CHECKSUM_ANNOTATION)
        )

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
            comp = _COMPRESSIONS[spec.compression]
        if spec.seekable is not None:
            comp = _SEEKABLE_COMPRESSIONS[spec.seekable]
        decrypt = False
        if k_in.encrypted:
            if spec.decrypt_keys:
                decrypt = True  # the keys were checked for the whole manifest
            elif want_enc or comp != k_in.compression or spec.seekable is not None:
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
        if config_rewritten(node):
            pass  # Write writes the new config; the source's would be left unreferenced
        else:
            config = BlobLayer(self.source, cfg)  # a blob like a layer, copied as it is
            yield (
                ("config", str(cfg.digest), node.config_type.base),
                LayerPlan(config, node.config_type),
            )
        for plan in node.layers:
            yield blob_key(plan), plan


class Resolve(Stage[Request, Planned]):
    """The stage ``Request -> Planned``: both ends opened (by ``opener``), the source
    image walked and every blob planned."""

    name = "resolve"

    def __init__(
        self, spec: ConvertOptions, registry: ProcessorRegistry | None, opener: Opener
    ) -> None:
        self.spec = spec
        self.registry = registry
        self.opener = opener

    def run(self, item: Request, ctx: Context) -> Planned:
        shown_src, shown_dst = item.shown
        src = self.opener.open_source(item.source, shown_src)
        ctx.resources.callback(src.close)
        root = src.root()
        ctx.emit(Event(EventKind.RESOLVED, root.digest, root.media_type, root.size, shown_src))
        dest = self.opener.open_dest(item.dest, shown_dst, ctx)

        def finish(
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            dest.finish(exc_type is None)  # a layout or archive commits only on success

        ctx.resources.push(finish)
        ends = Ends(src, dest, root, item)
        planner = Planner(src, self.spec, self.registry)
        tree = planner.plan(root)
        return Planned(ends, tree, tuple(planner.tasks(tree)))
