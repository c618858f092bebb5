"""What an OCI layout's ``index.json`` says: its images, their tags, the one a reference
picks, and the entry a sink adds. Shared by the layout and the oci-archive transports
(which read the same files out of a tar); ``choose_image`` also by docker-archive.

A tag is the ``org.opencontainers.image.ref.name`` annotation of an ``index.json``
entry, as skopeo and containerd use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    ImgpipeError,
    InvalidArgument,
    MalformedDocument,
    NotFound,
)
from imgpipe.formats.layout import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    INDEX_FILE,
    LAYOUT_FILE,
    find_refs,
    parse_layout_file,
)
from imgpipe.formats.manifest import Index, parse_index
from imgpipe.formats.mediatype import OCI_INDEX

__all__ = [
    "blob_digest_of",
    "check_layout_file",
    "choose_image",
    "load_index",
    "merge_entry",
    "ref_names",
    "select_root",
    "with_context",
]

T = TypeVar("T")


def with_context(err: ImgpipeError, where: str) -> ImgpipeError:
    """The same kind of error with ``where`` in front of its message."""
    return type(err)(f"{where}: {err}")


def check_layout_file(raw: bytes, where: str) -> None:
    """Validate an ``oci-layout`` file; MalformedDocument or Unsupported, with context."""
    try:
        parse_layout_file(raw)
    except ImgpipeError as e:
        raise with_context(e, f"{where}/{LAYOUT_FILE}") from None


def load_index(raw: bytes, where: str) -> Index:
    """Parse ``index.json``; MalformedDocument (or Unsupported, ResourceLimit), with context."""
    try:
        return parse_index(raw, OCI_INDEX)
    except ImgpipeError as e:
        raise with_context(e, f"{where}/{INDEX_FILE}") from None


def choose_image(
    images: Sequence[T],
    tag: str,
    tagged: Sequence[T],
    *,
    where: str,
    holder: str,
    present: Iterable[str],
    label: Callable[[T], str],
) -> T:
    """The image a reference picks: the one ``tagged`` ``tag``, else the only one.

    NotFound naming the tags ``present`` when nothing carries the tag, or when there is
    no image at all; InvalidArgument listing every image by ``label`` when no tag was
    given and the ``holder`` (layout, archive) holds several.
    """
    if tag:
        if tagged:
            return tagged[0]
        shown = sorted(set(present))
        raise NotFound(
            f"{where}: no image tagged {tag!r}; tags present: "
            + (", ".join(shown) if shown else "none")
        )
    if len(images) == 1:
        return images[0]
    if not images:
        raise NotFound(f"{where}: the {holder} holds no image")
    listed = ", ".join(label(i) for i in images)
    raise InvalidArgument(f"{where}: the {holder} holds several images, name one by tag: {listed}")


def select_root(index: Index, tag: str, where: str) -> Descriptor:
    """Pick the image a layout reference names, as ``resolve`` documents it.

    MalformedDocument if several entries carry the tag; otherwise as ``choose_image``.
    """
    found = find_refs(index, tag) if tag else []
    if len(found) > 1:
        digests = ", ".join(str(d.digest) for d in found)
        raise MalformedDocument(
            f"{where}: several index.json entries are tagged {tag!r}: {digests}"
        )
    return choose_image(
        index.manifests,
        tag,
        found,
        where=where,
        holder="layout",
        present=ref_names(index),
        label=lambda d: d.annotations.get(ANNOTATION_REF_NAME) or str(d.digest),
    )


def ref_names(index: Index) -> Iterator[str]:
    """The ``ref.name`` annotations of an index's entries, in order."""
    for d in index.manifests:
        name = d.annotations.get(ANNOTATION_REF_NAME)
        if name:
            yield name


def merge_entry(
    entries: tuple[Descriptor, ...] | list[Descriptor],
    root: Descriptor,
    *,
    tag: str,
    image_name: str,
) -> list[Descriptor]:
    """``entries`` with ``root`` added, replacing the entry it supersedes in place.

    With a tag, every entry carrying that ``ref.name`` is superseded (a tag names one
    image). Without one, an untagged entry of the same digest is, so that writing the
    same untagged image twice does not list it twice.
    """
    annotations = {
        k: v
        for k, v in root.annotations.items()
        # Names the root carried from wherever it was read are not names here.
        if k not in (ANNOTATION_REF_NAME, ANNOTATION_IMAGE_NAME)
    }
    if tag:
        annotations[ANNOTATION_REF_NAME] = tag
    if image_name:
        annotations[ANNOTATION_IMAGE_NAME] = image_name
    new = root.replace(annotations=annotations)

    def superseded(d: Descriptor) -> bool:
        name = d.annotations.get(ANNOTATION_REF_NAME, "")
        if tag:
            return name == tag
        return not name and d.digest == root.digest

    out: list[Descriptor] = []
    placed = False
    for d in entries:
        if superseded(d):
            if not placed:
                out.append(new)
                placed = True
            continue
        out.append(d)
    if not placed:
        out.append(new)
    return out


def blob_digest_of(rel: str) -> Digest | None:
    """The digest a ``blobs/<alg>/<hex>`` path names, or None if it names none."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    try:
        return Digest(parts[1], parts[2])
    except InvalidArgument:
        return None
