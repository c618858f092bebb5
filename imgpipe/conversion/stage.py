"""The conversion as a pipeline stage."""

from __future__ import annotations

from imgpipe.formats.reference import TransportRef
from imgpipe.pipeline import Context
from imgpipe.transports import TransportOptions

from .converter import Converter
from .options import ConvertOptions
from .report import ConvertReport

__all__ = ["Convert"]


class Convert:
    """The conversion as a pipeline stage: ``run(source, ctx) -> ConvertReport``.

    The source is a location string or TransportRef; the context's store serves the
    local names and its observer gets the events. Pass a ``converter`` to share
    connections with other stages or calls.
    """

    name = "convert"

    def __init__(
        self,
        destination: str | TransportRef,
        spec: ConvertOptions | None = None,
        *,
        options: TransportOptions | None = None,
        converter: Converter | None = None,
    ) -> None:
        self.destination = destination
        self.spec = spec or ConvertOptions()
        self.options = options
        self.converter = converter

    def run(self, item: str | TransportRef, ctx: Context) -> ConvertReport:
        if self.converter is not None:
            return self.converter.convert(item, self.destination, self.spec, observer=ctx.observer)
        with Converter(options=self.options, store=ctx.store) as c:
            return c.convert(item, self.destination, self.spec, observer=ctx.observer)
