"""The one check of an image config against the manifest and index entry naming it.

A config's digest says only that its bytes are the ones the manifest named; whether
they make a usable image is checked here, once, before an image is recorded (pull) and
whenever the model reads a config (:meth:`~imgpipe.image.lazy.BlobImage.config`):

* it parses as an image config (JSON, ``rootfs.diff_ids``, ``os``, ``architecture``);
* it has one DiffID per layer of the manifest, in order;
* its platform is the one the index entry claims (``os`` and ``architecture`` equal,
  ``variant`` equal where both say one, after normalising ``aarch64``/``arm64/v8`` and
  the like), so a pull by ``--platform`` gets what it asked for.

Only image configs (the OCI and Docker config media types) are checked: an artifact's
config (``application/vnd.oci.empty.v1+json``, a Helm chart's...) is kept as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgpipe.formats.config import ImageConfig, parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import MalformedDocument, ResourceLimit
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Manifest

from .blobs import BlobReader, open_verified

if TYPE_CHECKING:  # plan imports the model, which reads its configs through here
    from .plan import ImagePlan

__all__ = ["check_config", "check_plan_configs", "read_config"]


def check_config(raw: bytes, manifest_desc: Descriptor, manifest: Manifest) -> ImageConfig:
    """The config ``raw`` (the bytes of ``manifest.config``) parsed and checked against
    ``manifest`` and the platform its descriptor (the index entry) claims.

    MalformedDocument naming the manifest and the config for each way it can be wrong.
    """
    where = f"config {manifest.config.digest} of manifest {manifest_desc.digest}"
    try:
        config = parse_config(raw)
    except MalformedDocument as e:
        raise MalformedDocument(f"{where}: {e}") from None
    n, m = len(manifest.layers), len(config.diff_ids)
    if n != m:
        raise MalformedDocument(f"{where}: the manifest has {n} layers but the config {m} diff_ids")
    claimed = manifest_desc.platform
    if claimed is not None:
        want, have = claimed.normalized(), config.platform().normalized()
        if (
            want.os != have.os
            or want.architecture != have.architecture
            or (want.variant and have.variant and want.variant != have.variant)
        ):
            raise MalformedDocument(
                f"{where}: the index says platform {claimed}, the config {config.platform()}"
            )
    return config


def read_config(reader: BlobReader, manifest_desc: Descriptor, manifest: Manifest) -> ImageConfig:
    """``manifest``'s config read verified from ``reader`` and checked (``check_config``).

    ResourceLimit for a config over MAX_DOCUMENT_SIZE, before a byte is read.
    """
    desc = manifest.config
    if desc.size > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(
            f"config {desc.digest} is {desc.size} bytes; "
            f"documents over {MAX_DOCUMENT_SIZE} bytes are refused"
        )
    with open_verified(reader, desc) as f:
        return check_config(f.read(), manifest_desc, manifest)


def check_plan_configs(
    plan: ImagePlan, reader: BlobReader, *, config: Digest | None = None
) -> None:
    """Check the image config of every manifest of ``plan`` (read from ``reader``, where
    they are stored by now), or only of those whose config is ``config``.
    MalformedDocument naming the plan's source, for the first one that is wrong;
    artifacts' configs are skipped."""
    for desc in plan.manifests:
        manifest = plan.documents[desc.digest]
        if not isinstance(manifest, Manifest) or not manifest.config.media_type.is_config():
            continue
        if config is not None and manifest.config.digest != config:
            continue
        try:
            read_config(reader, desc, manifest)
        except (MalformedDocument, ResourceLimit) as e:
            source = plan.origin or plan.name
            raise type(e)(f"{source}: {e}" if source else str(e)) from None
