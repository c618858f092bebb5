"""The docker-archive transport: ``docker-archive:FILE[:REF]``, what ``docker save`` writes.

Such a tar has a ``manifest.json``: a list of ``{"Config", "RepoTags", "Layers"}`` whose
values are member names in the tar. There is no registry manifest in it, so the source
synthesises a Docker schema 2 manifest for the chosen entry: the config as
``application/vnd.docker.container.image.v1+json``, each layer as
``...rootfs.diff.tar`` (or ``.tar.gzip`` / ``.tar.zstd`` when the member starts with that
compression's magic bytes), each descriptor carrying the sha256 and size of the member's
bytes, hashed by streaming them once in ``resolve``. The manifest's bytes are kept in
memory (they are small) and served by ``open_blob`` like any blob.

Two layouts of the tar exist: the legacy one (``<id>/layer.tar``, ``<id>.json``, with
symlinks between layer directories when images share layers) and the one newer Docker
writes, which is also an OCI layout (``blobs/sha256/<hex>``). Links are followed inside
the archive only (at most ``MAX_LINK_HOPS``); a member whose name is ``blobs/<alg>/<hex>``
must hash to that digest (DigestMismatch otherwise).

Writing a docker-archive is not supported (yet): ``open_sink`` says so.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from imgpipe.content.verify import digest_stream, open_verified
from imgpipe.formats.config import parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import (
    DigestMismatch,
    ImgpipeError,
    MalformedDocument,
    ResourceLimit,
)
from imgpipe.formats.layout import ANNOTATION_IMAGE_NAME
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Manifest
from imgpipe.formats.mediatype import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    DOCKER_MANIFEST,
    MediaType,
)
from imgpipe.formats.reference import parse_reference

from .layoutindex import blob_digest_of, choose_image
from .tarindex import MemberSource, TarMember, normalise_member_name, open_member

__all__ = ["MANIFEST_FILE", "MAX_LINK_HOPS", "DockerArchiveSource"]

#: The member ``docker save`` writes its table of images to.
MANIFEST_FILE: Final = "manifest.json"

#: Longest chain of links followed to reach a member. ``docker save`` writes one hop
#: (a shared layer links to its first copy); the bound stops a loop.
MAX_LINK_HOPS: Final = 8

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, slots=True)
class ArchiveImage:
    """One entry of ``manifest.json``: member names, already normalised."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def parse_docker_manifest_json(raw: bytes, *, where: str) -> tuple[ArchiveImage, ...]:
    """Parse ``manifest.json``; MalformedDocument if it is not the list ``docker save`` writes."""
    try:
        obj: Any = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise MalformedDocument(f"{where}/{MANIFEST_FILE}: not JSON: {e}") from None
    if not isinstance(obj, list):
        raise MalformedDocument(f"{where}/{MANIFEST_FILE}: must be a JSON list")
    out: list[ArchiveImage] = []
    for i, item in enumerate(obj):
        what = f"{where}/{MANIFEST_FILE}[{i}]"
        if not isinstance(item, dict):
            raise MalformedDocument(f"{what}: must be an object")
        config = item.get("Config")
        if not isinstance(config, str) or not config:
            raise MalformedDocument(f"{what}: needs a 'Config' member name")
        tags = item.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise MalformedDocument(f"{what}: 'RepoTags' must be a list of strings")
        layers = item.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) and x for x in layers):
            raise MalformedDocument(f"{what}: 'Layers' must be a list of member names")
        out.append(
            ArchiveImage(
                config=normalise_member_name(config, where=what),
                repo_tags=tuple(tags),
                layers=tuple(normalise_member_name(x, where=what) for x in layers),
            )
        )
    return tuple(out)


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _canonical(name: str) -> str:
    """A RepoTag or asked-for name in full form.

    ``busybox`` and ``docker.io/library/busybox:latest`` both give the latter, as Docker
    treats them as one name. Names that do not parse are compared as written, so an odd
    RepoTag can still be selected by its exact text.
    """
    try:
        return str(parse_reference(name))
    except ImgpipeError:
        return name


class DockerArchiveSource(MemberSource):
    """Read one image out of a ``docker save`` tar.

    ``ref`` picks the ``manifest.json`` entry whose RepoTags hold it, compared in full
    form (``busybox:latest`` matches ``docker.io/library/busybox:latest``); with no ref the
    archive must hold exactly one image. Opening reads the tar headers and
    ``manifest.json``: NotFound if FILE is missing, MalformedDocument if it is not a tar,
    has a hostile member, or has no valid ``manifest.json``.
    """

    def __init__(self, path: str, *, ref: str = "") -> None:
        super().__init__("docker-archive", path)
        self.ref = ref
        try:
            member = self._table.files.get(MANIFEST_FILE)
            if member is None:
                raise MalformedDocument(
                    f"{path}: no {MANIFEST_FILE} member: not a docker-archive "
                    "(as written by docker save)"
                )
            self.images = parse_docker_manifest_json(self._read_capped(member), where=path)
        except BaseException:
            self.close()
            raise
        self._manifest: Manifest | None = None

    def select(self) -> ArchiveImage:
        """The ``manifest.json`` entry ``ref`` names (or the only one).

        NotFound listing the RepoTags present if none matches; InvalidArgument if no ref
        was given and there are several.
        """
        want = _canonical(self.ref) if self.ref else ""
        return choose_image(
            self.images,
            self.ref,
            [i for i in self.images if any(_canonical(t) == want for t in i.repo_tags)],
            where=f"docker-archive:{self.path}",
            holder="archive",
            present=(t for image in self.images for t in image.repo_tags),
            label=lambda i: ",".join(i.repo_tags) or f"(untagged, config {i.config})",
        )

    def resolve(self) -> Descriptor:
        """The synthesised Docker schema 2 manifest of the selected image.

        Hashes the config and every layer member once (later calls reuse the result).
        Raises as ``select``; MalformedDocument if a member named in ``manifest.json`` is
        missing; DigestMismatch if a ``blobs/<alg>/<hex>`` member hashes otherwise.
        """
        image = self.select()
        if self._manifest is None:
            self._manifest = self._synthesise(image)
        desc = self._manifest.descriptor()
        # The name to import under, as `docker load` does: the tag asked for, else the
        # image's first RepoTag.
        name = self.ref or (image.repo_tags[0] if image.repo_tags else "")
        return desc.replace(annotations={ANNOTATION_IMAGE_NAME: name}) if name else desc

    def _synthesise(self, image: ArchiveImage) -> Manifest:
        """The manifest for ``image``, with every digest tied to something the archive
        promised, since ``docker save`` writes no digests of its own: the config's member
        name is its sha256 (the image ID), and an uncompressed layer's sha256 is its
        diff_id in the config. A damaged member is DigestMismatch here, not a new image.
        """
        config = self._describe(image.config, DOCKER_CONFIG)
        stem = image.config.rsplit("/", 1)[-1].removesuffix(".json")
        if _is_sha256_hex(stem) and stem != config.digest.encoded:
            raise DigestMismatch(
                f"{self.path}: config {image.config!r} hashes to {config.digest}",
                expected=f"sha256:{stem}",
                actual=str(config.digest),
            )
        layers = [self._describe(name, None) for name in image.layers]
        if config.size > MAX_DOCUMENT_SIZE:
            raise ResourceLimit(
                f"{self.path}/{image.config}: larger than {MAX_DOCUMENT_SIZE} bytes"
            )
        # Read again through the verifying reader: the bytes parsed are the bytes hashed.
        with open_verified(self, config) as f:
            diff_ids = parse_config(f.read()).diff_ids
        if len(diff_ids) != len(layers):
            raise MalformedDocument(
                f"{self.path}: config lists {len(diff_ids)} diff_ids for {len(layers)} layers"
            )
        for name, layer, diff_id in zip(image.layers, layers, diff_ids, strict=True):
            if not layer.media_type.compression() and layer.digest != diff_id:
                raise DigestMismatch(
                    f"{self.path}: layer {name!r} hashes to {layer.digest}, "
                    f"the config's diff_id is {diff_id}",
                    expected=str(diff_id),
                    actual=str(layer.digest),
                )
        return Manifest.build(config, layers, media_type=DOCKER_MANIFEST)

    def _describe(self, name: str, media_type: MediaType | None) -> Descriptor:
        member = self._member(name)
        with open_member(self._fd, member, where=self.path) as f:
            if media_type is None:
                media_type = _layer_type(f.peek(len(_ZSTD_MAGIC))[: len(_ZSTD_MAGIC)])
            digest, size = digest_stream(f)
        named = blob_digest_of(member.name)
        if named is not None and named.algorithm == digest.algorithm and named != digest:
            raise DigestMismatch(
                f"{self.path}: member {member.name!r} hashes to {digest}",
                expected=str(named),
                actual=str(digest),
            )
        self._blobs[digest] = member
        return Descriptor(media_type=media_type, digest=digest, size=size)

    def _member(self, name: str) -> TarMember:
        """The regular file ``name`` leads to, following links inside the archive."""
        seen = name
        for _ in range(MAX_LINK_HOPS + 1):
            member = self._table.files.get(name)
            if member is not None:
                return member
            target = self._table.links.get(name)
            if target is None:
                raise MalformedDocument(
                    f"{self.path}: {MANIFEST_FILE} names {seen!r}, which is not in the archive"
                )
            name = target
        raise MalformedDocument(f"{self.path}: {seen!r}: more than {MAX_LINK_HOPS} links deep")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The synthesised manifest, the config or a layer, as stored; NotFound otherwise.

        Call ``resolve`` first: it is what learns the digests.
        """
        self._check_open()
        if self._manifest is not None and desc.digest == self._manifest.digest:
            return io.BytesIO(self._manifest.raw)
        return super().open_blob(desc)


def _layer_type(head: bytes) -> MediaType:
    """The Docker layer media type for a member starting with ``head``."""
    if head.startswith(_GZIP_MAGIC):
        return DOCKER_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        return DOCKER_LAYER_ZSTD
    return DOCKER_LAYER
