"""Media types as values with predicates.

``MediaType`` is a ``str`` subclass, so it serialises unchanged and an unknown type (an
artifact, a vendor layer) survives a round trip untouched. The predicates cover what the
pipeline branches on: index or manifest, layer or not, which compression, encrypted or not.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_FOREIGN_LAYER_GZIP",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1_MANIFEST",
    "DOCKER_SCHEMA1_SIGNED_MANIFEST",
    "LAYER_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDIST",
    "OCI_LAYER_NONDIST_GZIP",
    "OCI_LAYER_NONDIST_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_LAYOUT_HEADER",
    "OCI_MANIFEST",
    "Compression",
    "MediaType",
]

#: A layer's compression as :meth:`MediaType.compression` names it ("" = uncompressed).
Compression = Literal["gzip", "zstd", ""]


class MediaType(str):
    """A media type string with predicates. Compares and hashes like the plain string."""

    __slots__ = ()

    @property
    def base(self) -> str:
        """The type without parameters (``; charset=...``), lowercased."""
        return self.split(";", 1)[0].strip().lower()

    def is_index(self) -> bool:
        return self.base in (OCI_INDEX, DOCKER_MANIFEST_LIST)

    def is_manifest(self) -> bool:
        return self.base in (OCI_MANIFEST, DOCKER_MANIFEST)

    def is_schema1(self) -> bool:
        return self.base in (DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED_MANIFEST)

    def is_config(self) -> bool:
        return self.base in (OCI_CONFIG, DOCKER_CONFIG)

    def is_docker(self) -> bool:
        return self.base.startswith("application/vnd.docker.")

    def is_layer(self) -> bool:
        """True for every OCI and Docker layer type, compressed, encrypted or not."""
        b = self.base
        return b.startswith((_OCI_LAYER_PREFIX, *_DOCKER_LAYER_PREFIXES))

    def is_encrypted(self) -> bool:
        return self.is_layer() and self.base.endswith("+encrypted")

    def is_non_distributable(self) -> bool:
        b = self.base
        return ".nondistributable." in b or ".foreign." in b

    def compression(self) -> Compression:
        """``"gzip"``, ``"zstd"`` or ``""`` (uncompressed or not a layer)."""
        if not self.is_layer():
            return ""
        b = self.base.removesuffix("+encrypted")
        if b.endswith(("+gzip", ".tar.gzip")):
            return "gzip"
        if b.endswith(("+zstd", ".tar.zstd")):
            return "zstd"
        return ""

    def compressed(self, compression: Literal["gzip", "zstd"]) -> MediaType | None:
        """This uncompressed layer type compressed with ``compression`` (OCI spells it
        ``+gzip``, Docker ``.gzip``), if that is one of LAYER_TYPES; else None."""
        b = self.base
        if b not in LAYER_TYPES or self.compression():
            return None
        out = MediaType(b + ("." if self.is_docker() else "+") + compression)
        return out if out in LAYER_TYPES else None


_OCI_LAYER_PREFIX: Final = "application/vnd.oci.image.layer."
_DOCKER_LAYER_PREFIXES: Final = (
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
)

OCI_LAYOUT_HEADER: Final = MediaType("application/vnd.oci.layout.header.v1+json")
OCI_INDEX: Final = MediaType("application/vnd.oci.image.index.v1+json")
OCI_MANIFEST: Final = MediaType("application/vnd.oci.image.manifest.v1+json")
OCI_CONFIG: Final = MediaType("application/vnd.oci.image.config.v1+json")
OCI_EMPTY: Final = MediaType("application/vnd.oci.empty.v1+json")
OCI_LAYER: Final = MediaType("application/vnd.oci.image.layer.v1.tar")
OCI_LAYER_GZIP: Final = MediaType("application/vnd.oci.image.layer.v1.tar+gzip")
OCI_LAYER_ZSTD: Final = MediaType("application/vnd.oci.image.layer.v1.tar+zstd")
OCI_LAYER_NONDIST: Final = MediaType("application/vnd.oci.image.layer.nondistributable.v1.tar")
OCI_LAYER_NONDIST_GZIP: Final = MediaType(
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)
OCI_LAYER_NONDIST_ZSTD: Final = MediaType(
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
)

DOCKER_MANIFEST_LIST: Final = MediaType("application/vnd.docker.distribution.manifest.list.v2+json")
DOCKER_MANIFEST: Final = MediaType("application/vnd.docker.distribution.manifest.v2+json")
DOCKER_SCHEMA1_MANIFEST: Final = MediaType("application/vnd.docker.distribution.manifest.v1+json")
DOCKER_SCHEMA1_SIGNED_MANIFEST: Final = MediaType(
    "application/vnd.docker.distribution.manifest.v1+prettyjws"
)
DOCKER_CONFIG: Final = MediaType("application/vnd.docker.container.image.v1+json")
DOCKER_LAYER: Final = MediaType("application/vnd.docker.image.rootfs.diff.tar")
DOCKER_LAYER_GZIP: Final = MediaType("application/vnd.docker.image.rootfs.diff.tar.gzip")
DOCKER_LAYER_ZSTD: Final = MediaType("application/vnd.docker.image.rootfs.diff.tar.zstd")
DOCKER_FOREIGN_LAYER: Final = MediaType("application/vnd.docker.image.rootfs.foreign.diff.tar")
DOCKER_FOREIGN_LAYER_GZIP: Final = MediaType(
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

#: Every known unencrypted layer type: OCI (distributable and not) and Docker (and
#: foreign), uncompressed, gzip and zstd. Unknown suffixes (``+foo``) are not in it.
LAYER_TYPES: Final = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_ZSTD,
        DOCKER_FOREIGN_LAYER,
        DOCKER_FOREIGN_LAYER_GZIP,
    }
)
