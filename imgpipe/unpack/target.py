"""What to unpack: the manifest of an image for a platform, resolved to its layers,
DiffIDs and chain IDs; the keys its encrypted layers need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgpipe.errors import (
    DigestMismatch,
    ImgpipeError,
    MalformedDocument,
    NotFound,
    SizeMismatch,
    Unauthorized,
    Unsupported,
)
from imgpipe.formats.chainid import chain_ids
from imgpipe.formats.config import ImageConfig, parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Manifest
from imgpipe.formats.platform import Platform, best_match, host_platform
from imgpipe.pipeline import ImagePlan
from imgpipe.snapshots import Kind
from imgpipe.store import Store

if TYPE_CHECKING:
    from imgpipe.processors.ocicrypt import DecryptKey


def load_keys(keys: Sequence[str | DecryptKey]) -> list[DecryptKey]:
    if not keys:
        return []
    # imported when needed: cryptography costs ~40 ms of start-up, and most images are
    # not encrypted
    from imgpipe.processors.ocicrypt import load_private_key  # noqa: PLC0415

    return [load_private_key(k) if isinstance(k, str) else k for k in keys]


def as_platform(platform: str | Platform | None) -> Platform | None:
    return Platform.parse(platform) if isinstance(platform, str) else platform


@dataclass(frozen=True)
class Target:
    """One manifest of an image, resolved down to what unpack needs."""

    image: str
    config_desc: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[Digest, ...]
    chains: tuple[Digest, ...]


def read_config(store: Store, desc: Descriptor) -> ImageConfig:
    if not store.content.exists(desc.digest):
        raise NotFound(f"config {desc.digest} is not in the store (pull the image again)")
    return parse_config(store.content.read_bytes(desc.digest, limit=MAX_DOCUMENT_SIZE))


def select_target(plan: ImagePlan, store: Store, platform: Platform | None) -> Target:
    """The manifest of ``plan`` to unpack: the one for ``platform`` (default: this host;
    with one manifest and no platform asked for, that one whatever it is)."""
    candidates: list[tuple[Manifest, ImageConfig, Platform]] = []
    for desc in plan.manifests:
        doc = plan.documents[desc.digest]
        assert isinstance(doc, Manifest)
        if not store.content.exists(doc.config.digest):
            continue  # a platform whose blobs were never pulled
        config = read_config(store, doc.config)
        candidates.append((doc, config, desc.platform or config.platform()))
    if not candidates:
        raise NotFound(f"image {plan.name}: no manifest with its config in the store")
    if platform is None and len(candidates) == 1:
        picked = 0
    else:
        want = platform or host_platform()
        found = best_match(want, [p for _, _, p in candidates])
        if found is None:
            have = ", ".join(str(p) for _, _, p in candidates)
            raise NotFound(f"image {plan.name}: no manifest for platform {want} (has: {have})")
        picked = found
    manifest, config, _ = candidates[picked]
    layers = manifest.layers
    for i, layer in enumerate(layers):
        if not layer.media_type.is_layer():
            raise Unsupported(
                f"image {plan.name}: layer {i + 1} has media type {layer.media_type}, "
                "which is not a layer type"
            )
    if len(layers) != len(config.diff_ids):
        raise MalformedDocument(
            f"image {plan.name}: {len(layers)} layers but {len(config.diff_ids)} "
            "diff_ids in the config"
        )
    return Target(
        image=plan.name,
        config_desc=manifest.config,
        layers=tuple(layers),
        diff_ids=tuple(config.diff_ids),
        chains=tuple(chain_ids(config.diff_ids)),
    )


def layer_name(i: int, n: int, desc: Descriptor) -> str:
    return f"layer {i + 1}/{n} ({desc.digest}, {desc.media_type})"


def in_layer(e: ImgpipeError, where: str) -> ImgpipeError:
    """``e`` with ``where`` in front of its message, same class (exit codes stay right)."""
    msg = f"{where}: {e}"
    if isinstance(e, DigestMismatch):
        return DigestMismatch(msg, expected=e.expected, actual=e.actual)
    if isinstance(e, SizeMismatch):
        return SizeMismatch(msg, expected=e.expected, actual=e.actual)
    try:
        return type(e)(msg)
    except TypeError:  # a subclass with another constructor: keep it as it is
        return e


def check_keys(store: Store, sn_name: str | None, target: Target, keys: list[DecryptKey]) -> None:
    """Before any work: every encrypted layer that will be read must open with ``keys``,
    so a missing key fails up front, naming the layer, with nothing half-done."""
    for i, desc in enumerate(target.layers):
        if not desc.media_type.is_encrypted():
            continue
        # Checked even when the layer's snapshot is reused: having been unpacked once with
        # a key is no licence to use the image without one (imgcrypt's authorization
        # check, which `ctr-enc run` applies the same way).
        from imgpipe.processors.ocicrypt import check_authorization  # noqa: PLC0415

        try:
            check_authorization(desc.annotations, keys=keys)
        except Unauthorized as e:
            hint = "" if keys else " (give its private key: --decrypt-key FILE[:PASSWORD])"
            raise in_layer(
                e, f"{layer_name(i, len(target.layers), desc)} is encrypted{hint}"
            ) from None


def committed(store: Store, sn_name: str, chain: Digest) -> bool:
    try:
        rec = store.db.get_snapshot(sn_name, str(chain))
    except NotFound:
        return False
    return rec.kind == Kind.COMMITTED.value
