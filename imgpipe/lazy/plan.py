"""Can this image be mounted lazily, and if not, why: :func:`lazy_plan`."""

from __future__ import annotations

from dataclasses import dataclass

from imgpipe.formats.errors import RangeNotSupported, Unsupported
from imgpipe.image import Image
from imgpipe.image.blobs import BlobReader
from imgpipe.image.ranged import RangedLayer
from imgpipe.image.tocfetch import layer_format, range_reader

__all__ = ["LazyPlan", "lazy_plan"]

NO_LAZY_LAYERS = "no eStargz/zstd:chunked layers"
NO_RANGE = "the registry ignores Range"


@dataclass(frozen=True)
class LazyPlan:
    """What a lazy mount of ``image`` needs: a RangedLayer per layer (bottom first),
    TOCs loaded and verified; or, when ``fallback`` says why, none (``layers`` empty):
    the caller pulls in full and says so."""

    image: Image
    layers: tuple[RangedLayer, ...]
    fallback: str | None = None
    detail: str = ""  # the fallback's specifics (which layer, the registry's answer)

    @property
    def size(self) -> int:
        """The compressed bytes of the image's layers."""
        return sum(layer.descriptor.size for layer in self.layers)


def lazy_plan(image: Image, source: BlobReader) -> LazyPlan:
    """The plan for ``image`` read through ``source`` (a registry, or any blob reader
    whose streams seek). Fetches each layer's footer and TOC (verified against the
    layer's annotations). A layer of another format, or a source that cannot read part
    of a blob, gives a plan with ``fallback`` set; a corrupt or hostile TOC raises
    (CorruptLayer, MalformedDocument, ResourceLimit), as a corrupt blob would."""
    ranges = range_reader(source)
    layers: list[RangedLayer] = []
    for n, layer in enumerate(image.layers()):
        name = f"layer {n} ({layer.descriptor.digest})"
        try:
            layer_format(layer.descriptor, what=name)
        except Unsupported as e:
            return LazyPlan(image, (), NO_LAZY_LAYERS, str(e))
        layers.append(RangedLayer(layer, ranges, name=name))
    if not layers:
        return LazyPlan(image, (), NO_LAZY_LAYERS, "the image has no layers")
    for layer in layers:
        try:
            layer.loaded()
        except RangeNotSupported as e:
            return LazyPlan(image, (), NO_RANGE, str(e))
    return LazyPlan(image, tuple(layers))
