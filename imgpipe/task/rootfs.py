"""Where a container's root filesystem comes from: :class:`RootfsProvider`, an existing
directory (:class:`DirectoryRootfs`) or an image's snapshot (:class:`ImageRootfs`, of the
manifest :class:`~.stage.ChooseImage` took, its encrypted layers checked against the
keys the run was given)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from imgpipe.errors import NotFound

if TYPE_CHECKING:
    from imgpipe.formats.platform import Platform
    from imgpipe.pipeline.context import Context
    from imgpipe.snapshots import Mount, Snapshotter
    from imgpipe.store import Store
    from imgpipe.unpacking.target import Target


class RootfsProvider(Protocol):
    """Gives a container its root filesystem as mounts, and takes it back."""

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        """Mounts showing a fresh root filesystem for the container ``key``."""
        ...

    def release(self, key: str) -> None:
        """Discard what :meth:`prepare` made for ``key`` (idempotent)."""
        ...

    def record(self) -> tuple[str, str]:
        """``(snapshotter, image)`` to write in the container's record."""
        ...


class DirectoryRootfs:
    """An existing directory used as the rootfs (bind-mounted; nothing is removed).

    For tests and for programs that build a rootfs themselves; the container writes into
    the directory itself. (A plain class: as a dataclass it cost every `imgpipe run`
    ~0.5 ms to define.)
    """

    def __init__(self, path: Path, image_name: str = "") -> None:
        self.path, self.image_name = path, image_name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirectoryRootfs):
            return NotImplemented
        return (self.path, self.image_name) == (other.path, other.image_name)

    __hash__ = None  # type: ignore[assignment] # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"DirectoryRootfs(path={self.path!r}, image_name={self.image_name!r})"

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        from imgpipe.snapshots import Mount  # noqa: PLC0415 (the run path stays lean)

        return [Mount("bind", str(self.path), ("rbind", "ro" if read_only else "rw"))]

    def release(self, key: str) -> None:
        return None

    def record(self) -> tuple[str, str]:
        return "", self.image_name or str(self.path)


class ImageRootfs:
    """An active snapshot on an image's top layer: containerd's ``withNewSnapshot``.

    When the image is already unpacked in the snapshotter the snapshot is prepared
    directly on its committed top chain ID (the fast path of ``imgpipe run``: no unpack
    machinery to import); otherwise :func:`imgpipe.unpacking.stages.rootfs_stages`
    (FindImage -> Unpack -> PrepareRootfs) unpack it first, in ``context`` (the run's
    pipeline: its lease, its observer) or, without one, in a pipeline of their own.
    Either way the snapshot is labelled ``containerd.io/gc.root`` while the container
    exists.
    """

    def __init__(
        self,
        store: Store,
        target: Target,
        *,
        snapshotter: str | None = None,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str] = (),
        context: Context | None = None,
    ) -> None:
        self.store = store
        self.context = context
        #: the manifest to run (:class:`~.stage.ChooseImage`)
        self.target = target
        self.name = target.image
        self.snapshotter_name = snapshotter
        self.platform = platform
        self.decrypt_keys = tuple(decrypt_keys)
        self.snapshotter: Snapshotter | None = None

    def _open(self, name: str | None = None, *, probe: bool = True) -> Snapshotter:
        """The snapshotter ``name`` (default: ours, else the root's default).

        ``probe=False`` skips overlay's test mount: used when the metadata already holds
        a committed overlay snapshot of this image, i.e. overlay worked on this root.
        """
        if self.snapshotter is not None:
            return self.snapshotter
        from imgpipe.snapshots import (  # noqa: PLC0415 (lean run path)
            default_snapshotter_name,
            open_snapshotter,
        )

        base = Path(self.store.root) / "snapshots"
        name = name or self.snapshotter_name or default_snapshotter_name(base)
        if name == "overlay" and not probe:
            from imgpipe.snapshots.overlay import OverlaySnapshotter  # noqa: PLC0415

            self.snapshotter = OverlaySnapshotter(base / name, self.store.db, check=False)
        else:
            self.snapshotter = open_snapshotter(name, base / name, self.store.db)
        return self.snapshotter

    def _unpacked_in(self, top: str) -> str | None:
        """The snapshotter holding ``top`` committed, among those a run may use
        (the one asked for; else overlay, the default wherever it works)."""
        for name in (self.snapshotter_name,) if self.snapshotter_name else ("overlay",):
            try:
                if self.store.db.get_snapshot(name, top).kind == "committed":
                    return name
            except NotFound:
                continue
        return None

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        chains = self.target.chains
        if chains:
            top = str(chains[-1])
            found = self._unpacked_in(top)
            if found is not None:
                check_run_keys(self.target, self.decrypt_keys)
                sn = self._open(found, probe=False)
                from imgpipe.metadata.labels import LABEL_GC_ROOT  # noqa: PLC0415

                labels = {LABEL_GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                make = sn.view if read_only else sn.prepare
                try:
                    return make(key, top, labels=labels)
                except NotFound:
                    pass  # collected since we looked: unpack again below
        # heavy: the unpack machinery is imported only to unpack
        from imgpipe.unpacking.stages import rootfs_stages  # noqa: PLC0415

        stages = rootfs_stages(
            self._open(),
            key,
            platform=self.platform,
            decrypt_keys=self.decrypt_keys,
            read_only=read_only,
        )
        from imgpipe.pipeline.pipeline import Pipeline  # noqa: PLC0415

        mounts: list[Mount]
        if self.context is None:
            mounts = Pipeline(stages).run(self.name, store=self.store)
        else:
            mounts = Pipeline(stages).run_in(self.name, self.context)
        return mounts

    def release(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            self._open().remove(key)

    def record(self) -> tuple[str, str]:
        return self._open().name, self.name


def check_run_keys(target: Target, decrypt_keys: Sequence[str]) -> None:
    """Unpacked once with a key is not a licence to run without one (imgcrypt's
    authorization check): every encrypted layer must open with ``decrypt_keys``."""
    if not any(layer.media_type.is_encrypted() for layer in target.layers):
        return  # no cryptography to import
    from imgpipe.image import check_layer_keys  # noqa: PLC0415
    from imgpipe.image.keys import in_layer  # noqa: PLC0415
    from imgpipe.processors.ocicrypt import NoDecryptionKey  # noqa: PLC0415
    from imgpipe.unpacking.target import load_keys  # noqa: PLC0415

    try:
        check_layer_keys(target.layers, load_keys(decrypt_keys))
    except NoDecryptionKey as e:
        raise in_layer(e, f"image {target.image}: an encrypted layer refuses to run") from None
