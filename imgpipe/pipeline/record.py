"""Record: name the image in the metadata database."""

from __future__ import annotations

from imgpipe.events import Event, EventKind
from imgpipe.formats.errors import InvalidArgument
from imgpipe.image import ImagePlan
from imgpipe.metadata import ImageRecord

from .context import Context, Stage
from .names import normalize_name

__all__ = ["Record"]


class Record(Stage[ImagePlan, ImageRecord]):
    """Name the image: write ``name -> root descriptor`` to the metadata database.

    The name is ``image_name`` if given, else the plan's (from Resolve).
    """

    name = "record"

    def __init__(self, image_name: str = "") -> None:
        self.image_name = normalize_name(image_name) if image_name else ""

    def run(self, item: ImagePlan, ctx: Context) -> ImageRecord:
        name = self.image_name or item.name
        if not name:
            raise InvalidArgument("the source names no image: give a name (--name)")
        rec = ctx.store.db.put_image(name, item.root)
        root = item.root
        ctx.emit(Event(EventKind.IMAGE_RECORDED, root.digest, root.media_type, root.size, name))
        return rec
