"""``mount --lazy REF DIR`` and its ``umount DIR``: a lazy rootfs with a process of its own.

:func:`mount_lazy` resolves REF, plans it (:func:`~imgpipe.lazy.plan.lazy_plan`) and, if
it can be lazy, starts the *owner*: a process in a session of its own (forked twice, so
nobody's child but init's) that holds the FUSE fd (:func:`~imgpipe.lazy.start_lazy`
forks the server from it), mounts overlay on DIR (lowers on the FUSE mount; upper and
work dirs in the state dir, on local disk), reports back on a pipe and then waits for
SIGTERM, SIGINT or SIGHUP. :func:`umount_lazy` sends it SIGTERM and waits for it to have
taken everything down: the overlay, the FUSE mount, the server, the state dir.

State: ``<root>/lazy/mounts/<hash of DIR>/`` (state.json as for every lazy mount, with
``target`` and ``owner_stops``; owner.log and server.log hold what they printed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from imgpipe.config import with_defaults
from imgpipe.formats.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImgpipeError,
    NotFound,
    Unsupported,
)
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import parse_transport
from imgpipe.image import Image, Index, load, select
from imgpipe.image.tocfetch import RangeReader, range_reader
from imgpipe.pipeline.context import Root, opened_store
from imgpipe.remote.options import TransportOptions
from imgpipe.snapshots import Mount, mount_all, unmount
from imgpipe.store import Store
from imgpipe.transports import open_source

from .mount import LazyMount, start_lazy
from .plan import LazyPlan, lazy_plan
from .server import close_inherited
from .state import LayerState, read_state

__all__ = ["MOUNTS_DIR", "LazyMountResult", "lazy_state_dir", "mount_lazy", "umount_lazy"]

#: ``<root>/lazy/mounts/<hash of target>/``
MOUNTS_DIR: Final = Path("lazy") / "mounts"
_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: How long umount waits for the owner to take it all down.
UMOUNT_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class LazyMountResult:
    """What :func:`mount_lazy` did: mounted ``target`` lazily (``layers``: their state),
    or nothing, because of ``fallback`` (the caller pulls in full and says so)."""

    target: str
    fallback: str | None
    detail: str = ""
    layers: tuple[LayerState, ...] = ()
    state_dir: str = ""


def lazy_state_dir(root: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """The state dir of a ``mount --lazy`` on ``target`` under the imgpipe ``root``."""
    h = hashlib.sha256(os.fsencode(os.path.realpath(target))).hexdigest()[:32]
    return Path(root) / MOUNTS_DIR / h


def _pick(root: Image | Index, platform: Platform | None, what: str) -> Image:
    if isinstance(root, Image):
        return root
    chosen = select.pick(root.manifests(), platform, lambda i: i.platform())
    if chosen is None:
        want = platform or "this host's platform"
        raise NotFound(f"{what}: no image for {want}")
    return chosen


def mount_lazy(
    ref: str,
    target: str | os.PathLike[str],
    *,
    read_only: bool = False,
    background: bool = True,
    platform: str | Platform | None = None,
    options: TransportOptions | None = None,
    store: Store | None = None,
    root: Root = None,
) -> LazyMountResult:
    """Mount the image ``ref`` (a registry reference or any transport) lazily on the
    directory ``target``; :func:`umount_lazy` undoes it. Returns with ``fallback`` set
    (nothing mounted) when the image cannot be lazy: no eStargz/zstd:chunked layers, or
    a registry that ignores Range.

    AlreadyExists if a lazy mount is on ``target``; NotFound if ``target`` is not a
    directory; Unsupported without root or FUSE; CorruptLayer, MalformedDocument for a
    bad TOC; the registry's errors.
    """
    tgt = Path(os.path.realpath(target))
    if not tgt.is_dir():
        raise NotFound(f"mount point {target} is not an existing directory")
    if os.geteuid() != 0:
        raise Unsupported("a lazy mount needs root (mount(2) of FUSE and overlay)")
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    tref = parse_transport(ref)
    opts = with_defaults(options)
    with opened_store(store, root) as s, open_source(tref, options=opts) as source:
        sd = lazy_state_dir(s.root, tgt)
        if (sd / "state.json").exists():
            raise AlreadyExists(f"{tgt} already has a lazy mount: umount it first")
        image = _pick(load(source, source.resolve()), plat, ref)
        plan = lazy_plan(image, source)
        if plan.fallback is not None:
            return LazyMountResult(str(tgt), plan.fallback, plan.detail)
        sd.mkdir(parents=True, exist_ok=True, mode=0o700)

        def reopen() -> RangeReader:
            return range_reader(open_source(tref, options=opts))

        try:
            _start_owner(
                s, plan, sd, tgt, read_only=read_only, background=background, reopen=reopen
            )
        except BaseException:
            shutil.rmtree(sd, ignore_errors=True)
            raise
        return LazyMountResult(str(tgt), None, "", read_state(sd).layers, str(sd))


def _start_owner(
    store: Store,
    plan: LazyPlan,
    sd: Path,
    tgt: Path,
    *,
    read_only: bool,
    background: bool,
    reopen: Callable[[], RangeReader],
) -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the owner (covered through what it mounts)
        os.close(r)
        _owner(store, plan, sd, tgt, w, read_only=read_only, background=background, reopen=reopen)
    os.close(w)
    os.waitpid(pid, 0)  # the intermediate child: it exits once the owner is forked
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode(errors="replace")
    if answer != "ok":
        kind, _, message = answer.partition("\t")
        error = {"Unsupported": Unsupported, "AlreadyExists": AlreadyExists}.get(
            kind, FailedPrecondition
        )
        raise error(message or "the lazy mount's owner process exited before mounting")


def _owner(
    store: Store,
    plan: LazyPlan,
    sd: Path,
    tgt: Path,
    w: int,
    *,
    read_only: bool,
    background: bool,
    reopen: Callable[[], RangeReader],
) -> NoReturn:
    """The owner process: never returns."""
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    m: LazyMount | None = None
    try:
        # Signals wait for sigwait below; the server unblocks them for libfuse.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        close_inherited({w})  # the caller's terminal, database, pipes stay the caller's
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(sd / "owner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for fd, src in ((0, null), (1, null), (2, log)):
            os.dup2(src, fd)
        os.close(null)
        os.close(log)
        m = start_lazy(
            store,
            plan,
            sd,
            background=background,
            reopen=reopen,
            target=str(tgt),
            owner_stops=True,
        )
        rw = sd / "rw"
        for d in ("upper", "work"):
            (rw / d).mkdir(parents=True, exist_ok=True)
        options = [
            "lowerdir=" + ":".join(map(str, m.lowers)),
            f"upperdir={rw / 'upper'}",
            f"workdir={rw / 'work'}",
        ]
        if read_only:
            options.append("ro")
        mount_all([Mount(type="overlay", source="imgpipe-lazy", options=tuple(options))], tgt)
        os.write(w, b"ok")
        os.close(w)
        w = -1
    except BaseException as e:
        if w >= 0:
            kind = type(e).__name__ if isinstance(e, ImgpipeError) else "FailedPrecondition"
            with contextlib.suppress(OSError):
                os.write(w, f"{kind}\t{e}".encode())
        if m is not None:
            with contextlib.suppress(BaseException):
                m.stop()
        os._exit(1)
    signal.sigwait(_SIGNALS)
    code = 0
    try:
        unmount(tgt, detach=True)
        m.stop()
        shutil.rmtree(sd, ignore_errors=True)
    except BaseException:
        code = 1
    os._exit(code)


def umount_lazy(
    target: str | os.PathLike[str], *, store: Store | None = None, root: Root = None
) -> bool:
    """Take down the ``mount --lazy`` on ``target``: False if there is none. The owner
    does it (SIGTERM); if the owner is gone, this process unmounts what is left."""
    tgt = Path(os.path.realpath(target))
    with opened_store(store, root) as s:
        sd = lazy_state_dir(s.root, tgt)
        try:
            m = LazyMount.attach(sd)
        except (FileNotFoundError, ValueError):
            if not sd.exists():
                return False
            m = None
        if m is not None:
            m.stop()
        unmount(tgt, detach=True)
        if m is not None:
            unmount(m.mountpoint, detach=True)
        shutil.rmtree(sd, ignore_errors=True)
        return True
