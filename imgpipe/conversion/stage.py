"""The conversion as a pipeline stage."""

from __future__ import annotations

from imgpipe.formats.reference import TransportRef
from imgpipe.pipeline import Context, Stage
from imgpipe.transports import TransportOptions

from .converter import Converter
from .options import ConvertOptions
from .report import ConvertReport

__all__ = ["Convert"]


class Convert(Stage[str | TransportRef, ConvertReport]):
    """The conversion as a pipeline stage: ``run(source, ctx) -> ConvertReport``.

    The source is a location string or TransportRef; the context's store serves the
    local names and takes a local destination, under the run's lease (a failure later
    in the pipeline takes back what the conversion wrote); its observer gets the events.
    Pass a ``converter`` to share connections with other stages or calls.
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
            return self.converter.convert_in(item, self.destination, self.spec, ctx)
        store = ctx.store if ctx.has_store else None
        with Converter(options=self.options, store=store) as c:
            return c.convert_in(item, self.destination, self.spec, ctx)
