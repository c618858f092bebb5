"""LoadImage: an image already in the store, by name, as a plan."""

from __future__ import annotations

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.manifest import Index, Manifest
from imgpipe.image import ImagePlan, read_document, walk_image

from .context import Context, Stage

__all__ = ["LoadImage"]


class LoadImage(Stage[str, ImagePlan]):
    """An image already in the store, by its (normalised) name.

    Index entries whose manifests are not in the store (platforms never pulled) are
    left out of the plan; the index itself is kept byte for byte. The plan's source is
    the store's content.
    """

    name = "load-image"

    def run(self, item: str, ctx: Context) -> ImagePlan:
        rec = ctx.store.db.get_image(item)
        content = ctx.store.content

        def read(desc: Descriptor) -> Manifest | Index | None:
            if desc is not rec.target and not content.exists(desc.digest):
                return None
            ctx.protect(desc.digest)
            return read_document(content, desc)

        plan = walk_image(rec.target, read, all_platforms=True)
        return plan.replace(name=rec.name, source=content)
