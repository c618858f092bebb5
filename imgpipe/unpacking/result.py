"""What an unpack returns, and the names (labels, event kinds) it writes."""

from __future__ import annotations

from typing import Final, NamedTuple

from imgpipe.formats.digest import Digest

#: None: the snapshotter is :func:`imgpipe.snapshots.default_snapshotter_name` of the
#: root (overlay where overlayfs works, else native), resolved on each call.
DEFAULT_SNAPSHOTTER: Final[str | None] = None

#: On the extraction snapshot, as containerd: the chain ID it will be committed as.
LABEL_SNAPSHOT_REF: Final = "containerd.io/snapshot.ref"

#: The kind of the :class:`~imgpipe.pipeline.Event` sent per layer; ``detail`` is
#: ``"reused"`` or ``"unpacked"``.
EVENT_LAYER_UNPACKED: Final = "layer.unpacked"
#: Sent when applying a layer fails (its active snapshot is already removed); ``detail``
#: is the error message.
EVENT_LAYER_FAILED: Final = "layer.failed"


# NamedTuples, not frozen dataclasses: every pull --unpack defines them (~1.5 ms each).
class LayerUnpack(NamedTuple):
    """One layer of an unpack: its blob digest, DiffID and chain ID, whether an existing
    committed snapshot was reused, and the seconds spent (decode + apply + commit).
    ``followed``: bytes of the blob ``pull --unpack`` applied from its ingest before the
    download's commit had verified them (0 when it read the stored blob)."""

    digest: Digest
    diff_id: Digest
    chain_id: Digest
    reused: bool
    seconds: float
    followed: int = 0


class UnpackResult(NamedTuple):
    """An unpacked image: its name, the snapshotter (``""`` for an export), the top
    chain ID (the snapshot to prepare a rootfs on) and each layer, base first."""

    image: str
    snapshotter: str
    chain_id: Digest
    layers: tuple[LayerUnpack, ...]
