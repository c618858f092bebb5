"""Unpack: an image's layers applied into snapshots keyed by chain ID, and what uses them.

containerd's unpacker (``core/unpack``, ``pkg/rootfs/apply.go``) is the model. For each
layer, base first::

    chain = ChainID(L0..Lk)
    committed snapshot named chain exists?      -> reuse it (nothing read, nothing written)
    else: prepare "extract-<unique> <chain>" on ChainID(L0..Lk-1)
          blob -> decoders (decrypt, decompress) -> apply_layer(expected DiffID)
          commit as chain                         (AlreadyExists: another unpack won; fine)
          on any failure: remove the active snapshot (nothing half-applied is committed)

Then the layer blobs get ``containerd.io/uncompressed=<DiffID>`` and the config
``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>``, so garbage collection
keeps the snapshots while the image exists (image -> manifest -> config -> snapshot ->
parents). The whole run holds a lease on every snapshot it creates or relies on, so a
concurrent ``gc`` never removes one between our check and our use.

Where a layer is applied:

* overlay: straight into the active snapshot's upper directory, whiteouts written the
  way overlayfs reads them (0:0 character devices, ``trusted.overlay.opaque``), with the
  parents' directories as ``lowers`` for hardlink targets and directory copy-up; no mount;
* native and btrfs: into the snapshot's directory (their mounts are binds of it), with
  plain delete-style whiteouts; a snapshotter whose mounts are not a single bind is
  mounted on a temporary directory (root only).

Speed. Each layer is decoded on a thread of its own, a few MiB ahead of the applier
(decompressors release the GIL, the tar applier mostly holds it): 19% less time on the
benchmark image. Layers are applied one after the other: containerd's parallel mode
(parentless overlay snapshots applied at once, committed in order with rebase) was
built and measured here and lost on two cores (0.81 s sequential, 0.88 s with two
threads, 1.16 s with four), because the per-entry work is Python under the GIL; it also
cannot copy up a lower directory's metadata or a hardlink target from parents that are
not there yet. ``pull --unpack`` (:class:`FetchUnpack`) applies each layer while its
blob downloads, reading the ingest as it is written, and commits it once the blob is
verified and stored (see there for why that is safe).

Concurrency. Two unpacks of one image at once (threads or processes) serialise per chain
ID on a file lock (``<snapshotter root>/unpack-locks/<2 hex>``, 256 buckets so the lock
files stay few): the second waits, then finds the snapshot committed and reuses it. The
commit race (AlreadyExists) is still handled, so correctness never depends on the lock.

Mounts. :func:`mount` puts an active snapshot (or a read-only view) of the image's top
layer on a directory and records ``target -> snapshot`` in ``<root>/mounts/``;
:func:`umount` unmounts it and removes the snapshot. Such snapshots carry
``containerd.io/gc.root`` so a ``gc`` never pulls a rootfs from under a mount or a
running container; ``imgpipe snapshots rm`` removes one left behind by a crash.

Errors (the :mod:`imgpipe.errors` classes): NotFound (no such image, a blob missing from
the store, no manifest for the platform), Unauthorized (an encrypted layer no given key
opens; the message names the layer), DigestMismatch (a layer's DiffID is not the
config's), MalformedDocument (a layer tar that is truncated or hostile), Unsupported
(a snapshotter that cannot work here), FailedPrecondition (busy mounts, a snapshot in
use).

Modules, one job each:

* :mod:`.result` — :class:`UnpackResult`, :class:`LayerUnpack`, labels and event kinds;
* :mod:`.target` — which manifest, layers, DiffIDs, chain IDs; the keys they need;
* :mod:`.apply` — layers into snapshots (reuse, lock, prepare, decode, apply, commit);
* :mod:`.stages` — the pipeline stages :class:`Unpack` and :class:`FetchUnpack`;
* :mod:`.verbs` — :func:`unpack`, :func:`pull_unpack`, :func:`prepare_rootfs`;
* :mod:`.mounts` — :func:`mount`, :func:`mounted`, :func:`umount`;
* :mod:`.export` — :func:`export_rootfs` (a plain directory, no snapshotter);
* :mod:`.snapshotters` — :func:`open_store_snapshotter`.

The names are re-exported lazily (PEP 562): ``imgpipe run`` imports
:mod:`imgpipe.unpacking` parts without paying for the whole pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from .export import export_rootfs
    from .mounts import mount, mounted, umount
    from .result import (
        DEFAULT_SNAPSHOTTER,
        EVENT_LAYER_FAILED,
        EVENT_LAYER_UNPACKED,
        LABEL_SNAPSHOT_REF,
        LayerUnpack,
        UnpackResult,
    )
    from .snapshotters import open_store_snapshotter
    from .stages import FetchUnpack, FindImage, PrepareRootfs, Unpack
    from .verbs import prepare_rootfs, pull_unpack, unpack

#: Public name -> the module of this package that defines it.
_WHERE = {
    "DEFAULT_SNAPSHOTTER": "result",
    "EVENT_LAYER_FAILED": "result",
    "EVENT_LAYER_UNPACKED": "result",
    "FetchUnpack": "stages",
    "FindImage": "stages",
    "PrepareRootfs": "stages",
    "LABEL_SNAPSHOT_REF": "result",
    "LayerUnpack": "result",
    "Unpack": "stages",
    "UnpackResult": "result",
    "export_rootfs": "export",
    "mount": "mounts",
    "mounted": "mounts",
    "open_store_snapshotter": "snapshotters",
    "prepare_rootfs": "verbs",
    "pull_unpack": "verbs",
    "umount": "mounts",
    "unpack": "verbs",
}


__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "DEFAULT_SNAPSHOTTER",
    "EVENT_LAYER_FAILED",
    "EVENT_LAYER_UNPACKED",
    "LABEL_SNAPSHOT_REF",
    "FetchUnpack",
    "FindImage",
    "LayerUnpack",
    "PrepareRootfs",
    "Unpack",
    "UnpackResult",
    "export_rootfs",
    "mount",
    "mounted",
    "open_store_snapshotter",
    "prepare_rootfs",
    "pull_unpack",
    "umount",
    "unpack",
]
