"""Can this image be mounted lazily, and if not, why: :func:`lazy_plan`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

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
    # The TOCs are fetched together: each is two round trips (footer, TOC), and a run
    # waits for all of them before its container starts. The first failure in layer
    # order is the one reported, whichever finished first.
    errors = _load_all(layers)
    for error in errors:
        if isinstance(error, RangeNotSupported):
            return LazyPlan(image, (), NO_RANGE, str(error))
        if error is not None:
            raise error
    return LazyPlan(image, tuple(layers))


#: TOCs fetched at once (the registry client's pool serves this many connections).
MAX_TOC_FETCHES: Final = 8


def _load_all(layers: list[RangedLayer]) -> list[BaseException | None]:
    """Load every layer's TOC, at most MAX_TOC_FETCHES at once; per layer, the
    exception its load raised (None: loaded)."""

    def load(layer: RangedLayer) -> BaseException | None:
        try:
            layer.loaded()
        except Exception as e:  # handed back, raised in layer order
            return e
        return None

    if len(layers) == 1:
        return [load(layers[0])]
    with ThreadPoolExecutor(min(len(layers), MAX_TOC_FETCHES), "imgpipe-toc") as pool:
        return list(pool.map(load, layers))
