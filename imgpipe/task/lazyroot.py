"""``run --lazy``: a container on a lazily mounted image (:class:`LazyRootfs`).

::

    FindOrPullLazy  str                    -> LazyPulled | ImageRecord
    ChooseLazy      LazyPulled|ImageRecord -> RunImage (LazyRootfs, or ImageRootfs)

:class:`FindOrPullLazy` pulls lazily (:mod:`imgpipe.lazy.pulling`: documents, config,
TOCs) in the run's context, unless the store holds the image complete: then the run is
an ordinary one (and says so). A lazily pulled image still lacking layers is read from
the source its label names. After a fallback (no eStargz/zstd:chunked layers, a registry
ignoring Range) the layers were pulled in full and :class:`ChooseLazy` hands on to
:class:`~.stage.ChooseImage`: the run unpacks as any run does.

:class:`LazyRootfs` is the :class:`~.rootfs.RootfsProvider` of a lazy run. ``prepare``
starts the FUSE server (:func:`imgpipe.lazy.start_lazy`; the calling process is its
owner) with its state in ``<root>/tasks/<id>/lazy/`` and returns one overlay mount: the
FUSE mount's layer directories as lowers (top first), upper and work directories on
local disk beside the state. Everything lives in the container's directory, so ``rm``
removing the directory removes it; :func:`stop_lazy` (called by the container's cleanup,
the monitor's teardown and ``rm``) stops the server and the FUSE mount, after the
overlay is unmounted, and starts the background completion of what is still missing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from imgpipe.errors import NotFound
from imgpipe.pipeline.context import Context, Stage

from .stage import ChooseImage, RunImage

if TYPE_CHECKING:
    from imgpipe.formats.platform import Platform
    from imgpipe.lazy.pulling import LayerReport, LazyPulled
    from imgpipe.metadata import ImageRecord
    from imgpipe.snapshots import Mount
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions
    from imgpipe.unpacking.target import Target

__all__ = [
    "LAZY_DIR",
    "ChooseLazy",
    "FindOrPullLazy",
    "LazyRootfs",
    "LazyRun",
    "stop_lazy",
]

#: The lazy mount's directory inside the container's: state.json, upper/, work/.
LAZY_DIR: Final = "lazy"
_RUN_FILE: Final = "run.json"  # what stop_lazy needs to start the completion
#: The lazy mounts this process owns (it started them, or adopted them: the monitor), by
#: state dir: stopped as their owner, whose watcher must not take the stop for a death.
_OWNED: dict[Path, Any] = {}


@dataclass(frozen=True)
class LazyRun:
    """``run --lazy``'s settings: the background fetch of the rest of each layer
    (``--lazy-background``), and two callbacks for the CLI: ``on_pulled`` with the lazy
    pull's result (its fallback, per-layer states), ``on_layers`` with the layers' states
    once the container has ended (``run``) or started (``run -d``)."""

    background: bool = True
    on_pulled: Callable[[LazyPulled], None] | None = None
    on_layers: Callable[[Sequence[LayerReport]], None] | None = None


class FindOrPullLazy(Stage[str, "LazyPulled | ImageRecord"]):
    """The stored image when it is complete (an ordinary run), else a lazy pull."""

    name = "find-or-pull-lazy"

    def __init__(
        self,
        lazy: LazyRun,
        *,
        platform: str | Platform | None = None,
        options: TransportOptions | None = None,
    ) -> None:
        self.lazy, self.platform, self.options = lazy, platform, options

    def run(self, item: str, ctx: Context) -> LazyPulled | ImageRecord:
        from imgpipe.formats.reference import parse_transport  # noqa: PLC0415
        from imgpipe.lazy.pulling import (  # noqa: PLC0415
            ALREADY_STORED,
            LazyPulled,
            complete_source,
            lazy_pull_pipeline,
        )
        from imgpipe.unpacking.target import as_platform, stored_target  # noqa: PLC0415

        ref = parse_transport(item)
        plat = as_platform(self.platform)
        cannot = cannot_mount()
        if cannot is not None:  # said, then an ordinary run (pulled in full if need be)
            from .stage import FindOrPull  # noqa: PLC0415

            found = FindOrPull(platform=self.platform, options=self.options).run(item, ctx)
            if self.lazy.on_pulled is not None:
                self.lazy.on_pulled(_stored(found, stored_target(ctx.store, found, plat), cannot))
            return found
        record = None
        if ref.transport == "docker" and ref.reference is not None:
            with contextlib.suppress(NotFound):
                record = ctx.store.db.get_image(str(ref.reference))
        name = None
        if record is not None:
            target = stored_target(ctx.store, record, plat)
            missing = [
                x for x in target.layers if not ctx.store.content.exists(x.descriptor.digest)
            ]
            source = complete_source(record)
            if not missing or source is None:
                if self.lazy.on_pulled is not None:
                    self.lazy.on_pulled(_stored(record, target, ALREADY_STORED))
                return record
            ref, name = source, record.name
        pull = lazy_pull_pipeline(name=name, platform=plat, options=self.options)
        pulled: LazyPulled = pull.run_in(ref, ctx)
        if self.lazy.on_pulled is not None:
            self.lazy.on_pulled(pulled)
        assert isinstance(pulled, LazyPulled)
        return pulled


def cannot_mount() -> str | None:
    """Why this process cannot make a lazy mount (None: it can): FUSE and overlay
    mounts need root, and the kernel's /dev/fuse."""
    if os.geteuid() != 0:
        return "lazy mounts need root (FUSE and overlay mounts)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (modprobe fuse)"
    return None


def _stored(record: ImageRecord, target: Target, why: str) -> LazyPulled:
    """What on_pulled is told of an image the store holds complete."""
    from imgpipe.lazy.pulling import COMPLETE, LayerReport, LazyPulled  # noqa: PLC0415

    descs = [layer.descriptor for layer in target.layers]
    layers = tuple(LayerReport(n, d.digest, d.size, COMPLETE) for n, d in enumerate(descs))
    return LazyPulled(record, None, target.model, None, None, why, layers)  # type: ignore[arg-type]


class ChooseLazy(Stage["LazyPulled | ImageRecord", RunImage]):
    """A :class:`LazyRootfs` for a lazily pulled image; ChooseImage's rootfs otherwise."""

    name = "choose-image"

    def __init__(
        self,
        lazy: LazyRun,
        *,
        snapshotter: str | None = None,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str] = (),
        options: TransportOptions | None = None,
    ) -> None:
        self.lazy, self.options = lazy, options
        self.choose = ChooseImage(
            snapshotter=snapshotter, platform=platform, decrypt_keys=decrypt_keys
        )

    def run(self, item: LazyPulled | ImageRecord, ctx: Context) -> RunImage:
        from imgpipe.lazy.pulling import LazyPulled  # noqa: PLC0415

        if not isinstance(item, LazyPulled):
            return self.choose.run(item, ctx)
        if item.lazy is None:
            assert item.record is not None
            return self.choose.run(item.record, ctx)
        rootfs = LazyRootfs(ctx, item, lazy=self.lazy, options=self.options)
        return RunImage(rootfs, item.image.config().config)


class LazyRootfs:
    """The rootfs of a lazily pulled image: overlay on its FUSE-mounted layers."""

    def __init__(
        self,
        ctx: Context,
        pulled: LazyPulled,
        *,
        lazy: LazyRun,
        options: TransportOptions | None = None,
    ) -> None:
        self.ctx, self.pulled, self.lazy, self.options = ctx, pulled, lazy, options
        self.store: Store = ctx.store
        self.mount: Any = None  # imgpipe.lazy.LazyMount, once prepared

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        from imgpipe.lazy import start_lazy  # noqa: PLC0415
        from imgpipe.lazy.pulling import lazy_source  # noqa: PLC0415
        from imgpipe.snapshots import Mount  # noqa: PLC0415

        from . import state  # noqa: PLC0415

        base = state.task_dir(self.store.root, key) / LAZY_DIR
        base.mkdir(mode=0o700)
        rec = self.pulled.record
        assert rec is not None
        settings = {
            "source": lazy_source(self.pulled.ref, self.pulled.image),
            "name": rec.name,
            "manifest": str(self.pulled.image.descriptor.digest),
            "background": self.lazy.background,
            "options": self.options._asdict() if self.options is not None else None,
        }
        (base / _RUN_FILE).write_text(json.dumps(settings))
        ref, options = self.pulled.ref, self.options

        def reopen() -> Any:
            from imgpipe.image.tocfetch import range_reader  # noqa: PLC0415
            from imgpipe.transports import open_source  # noqa: PLC0415

            return range_reader(open_source(ref, options=options))

        self.mount = _OWNED[base / "state"] = start_lazy(
            self.store,
            self.pulled.lazy,
            base / "state",
            background=self.lazy.background,
            reopen=reopen,
        )
        # after the container (the stack unwinds before the container's cleanup runs)
        self.ctx.resources.callback(self._report)
        lowers = ":".join(str(p) for p in self.mount.lowers)
        if read_only:
            return [Mount("overlay", "overlay", (f"lowerdir={lowers}",))]
        for sub in ("upper", "work"):
            (base / sub).mkdir(mode=0o755)
        opts = (f"lowerdir={lowers}", f"upperdir={base / 'upper'}", f"workdir={base / 'work'}")
        return [Mount("overlay", "overlay", opts)]

    def _report(self) -> None:
        if self.mount is None or self.lazy.on_layers is None:
            return
        self.lazy.on_layers(layer_reports(self.pulled, self.mount.status()))

    def release(self, key: str) -> None:
        from . import state  # noqa: PLC0415

        stop_lazy(state.task_dir(self.store.root, key), background=False)

    def record(self) -> tuple[str, str]:
        rec = self.pulled.record
        return "", rec.name if rec is not None else str(self.pulled.ref)


def layer_reports(pulled: LazyPulled, states: Sequence[Any]) -> list[LayerReport]:
    """The mount's per-layer states as the pull's LayerReports (bytes: TOC + reads)."""
    from imgpipe.lazy.pulling import LayerReport  # noqa: PLC0415

    by_digest = {str(s.digest): s for s in states}
    out = []
    for layer in pulled.layers:
        s = by_digest.get(str(layer.digest))
        if s is None:
            out.append(layer)
            continue
        error = s.error or ""
        fetched = layer.fetched + s.fetched  # the TOC here, the reads in the server
        out.append(LayerReport(layer.index, layer.digest, layer.size, s.state, fetched, error))
    return out


def lazy_failure(bundle: Path) -> str | None:
    """Why the lazy mount of the container in ``bundle`` failed (None: it did not, or
    the container is not lazy): what ``ps`` shows."""
    state_dir = bundle / LAZY_DIR / "state"
    if not state_dir.is_dir():
        return None
    from imgpipe.lazy import LazyMount  # noqa: PLC0415

    try:
        failure: str | None = LazyMount.attach(state_dir).failure()
    except (NotFound, OSError):
        return None
    return failure


def lazy_fd(bundle: Path) -> int:
    """The FUSE descriptor of the lazy mount this process owns for the container in
    ``bundle`` (-1: none), for ``run -d`` to hand to the monitor (:func:`adopt_lazy`)."""
    owned = _OWNED.get(bundle / LAZY_DIR / "state")
    return int(owned.fd) if owned is not None else -1


def adopt_lazy(bundle: Path, fd: int) -> None:
    """In the monitor of ``run -d --lazy``: become the owner of the container's lazy
    mount, whose FUSE descriptor ``fd`` the caller passed: this process now watches the
    server (EIO for the container's reads if it dies, the reason in the state for
    ``ps``) and stops it at the teardown (:func:`stop_lazy`)."""
    from imgpipe.lazy import LazyMount  # noqa: PLC0415

    state_dir = bundle / LAZY_DIR / "state"
    m = LazyMount.attach(state_dir)
    m.adopt(fd)
    _OWNED[state_dir] = m


def stop_lazy(bundle: Path, *, background: bool = True) -> None:
    """Stop the lazy mount of the container in ``bundle`` (its server, the FUSE mount,
    the descriptor), once its overlay is unmounted; then, if the run asked for the
    background fetch and layers are still missing, start the completion
    (:mod:`imgpipe.lazy.completing`). Idempotent; nothing for a container not lazy."""
    base = bundle / LAZY_DIR
    if not (base / "state").is_dir():
        return
    from imgpipe.lazy import LazyMount  # noqa: PLC0415

    owned = _OWNED.pop(base / "state", None)  # ours: stopped as its owner
    with contextlib.suppress(NotFound, FileNotFoundError):
        (owned or LazyMount.attach(base / "state")).stop()
    try:
        settings = json.loads((base / _RUN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return
    if background and settings.get("background"):
        (base / _RUN_FILE).unlink()  # once
        _complete(bundle.parent.parent, settings)


def _complete(root: Path, settings: dict[str, Any]) -> None:
    from imgpipe.formats.digest import Digest  # noqa: PLC0415
    from imgpipe.lazy.completing import spawn_completion  # noqa: PLC0415
    from imgpipe.remote.options import TransportOptions  # noqa: PLC0415

    raw = settings.get("options")
    options = TransportOptions(**raw) if isinstance(raw, dict) else None
    manifest = Digest.parse(settings["manifest"])
    spawn_completion(root, settings["source"], settings["name"], manifest, options)
