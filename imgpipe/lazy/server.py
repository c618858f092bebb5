"""The FUSE server: a forked child of the mount's owner, in a session of its own.

It serves the tree on the connection its parent mounted (``/dev/fd/N``), keeps the state
file current (per layer: state, bytes fetched, error), and runs the prefetch and the
background convergence (:mod:`imgpipe.lazy.background`). libfuse owns its signals:
SIGTERM ends the loop. It never returns to the caller's code: :func:`run_child` ends the
process with ``os._exit`` (the parent's ``finally`` blocks and atexit handlers are the
parent's, not ours).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, NoReturn

from imgpipe.formats.errors import CorruptLayer, ImgpipeError
from imgpipe.image.ranged import RangedLayer
from imgpipe.image.tocfetch import Fetcher, RangeReader, SeekableRanges
from imgpipe.store import Store

from .background import Convergence
from .cache import CachingRanges, LayerCache, cache_dir
from .ops import Activity, LazyOps
from .plan import LazyPlan
from .state import COMPLETE, MountState, start_time, write_state
from .tree import Tree

__all__ = ["Server", "build_server", "close_inherited", "run_child"]

#: How often the bytes-fetched figures are written out while they change (a status
#: refresh for `ps`; nothing waits on it).
REFRESH_SECONDS: Final = 1.0
LOG_FILE: Final = "server.log"
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Server:
    """Serves ``tree`` from ``layers`` and keeps ``state_dir``/state.json current."""

    def __init__(
        self,
        fd: int,
        tree: Tree,
        layers: Sequence[RangedLayer],
        state_dir: Path,
        state: MountState,
        *,
        on_ready: Callable[[], None],
        fetched: Callable[[int], int] | None = None,
        on_corrupt: Callable[[int, int, int], None] | None = None,
        background: Callable[[Server], None] | None = None,
    ) -> None:
        self.fd = fd
        self.tree = tree
        self.layers = layers
        self.state_dir = state_dir
        self.activity = Activity()
        self.stopping = threading.Event()
        self._state = state
        self._lock = threading.Lock()
        self._written: MountState | None = None
        self._on_ready = on_ready
        self._background = background
        self._fetched = fetched or (lambda n: self.layers[n].fetcher.bytes_fetched)
        self._on_corrupt = on_corrupt

    # -- the state file ------------------------------------------------------------------

    def update(self, n: int | None = None, /, **changes: Any) -> None:
        """Change layer ``n``'s fields (with ``n`` None: the mount's own fields, or only
        refresh the counts) and write the state file if anything changed."""
        with self._lock:
            state = self._state
            if n is not None:
                state = state.with_layer(n, **changes)
            elif changes:
                state = replace(state, **changes)
            layers = tuple(
                replace(ls, fetched=max(ls.fetched, self._fetched(n)))
                for n, ls in enumerate(state.layers)
            )
            self._state = state = replace(state, layers=layers)
            if state != self._written:
                write_state(self.state_dir, state)
                self._written = state

    def state(self) -> MountState:
        with self._lock:
            return self._state

    def layer_error(self, n: int, error: ImgpipeError, span: tuple[int, int]) -> None:
        """A read of layer ``n`` failed: on record (the message names the layer); bytes
        that failed their digest leave the cache, so they are fetched again."""
        if isinstance(error, CorruptLayer) and self._on_corrupt is not None:
            with contextlib.suppress(OSError):
                self._on_corrupt(n, *span)
        with contextlib.suppress(OSError):
            self.update(n, error=str(error))

    def _refresh(self) -> None:
        while not self.stopping.wait(REFRESH_SECONDS):
            with contextlib.suppress(OSError):
                self.update()

    # -- serving -------------------------------------------------------------------------

    def _ready(self) -> None:
        self._on_ready()
        if self._background is not None:
            threading.Thread(
                target=self._background, args=(self,), name="imgpipe-lazy-bg", daemon=True
            ).start()

    def run(self) -> None:
        from .binding import serve  # noqa: PLC0415 (libfuse: the server process only)

        pid = os.getpid()
        with self._lock:
            self._state = replace(self._state, server_pid=pid, server_start=start_time(pid))
        self.update()
        ops = LazyOps(
            self.tree,
            self.layers,
            on_error=self.layer_error,
            on_ready=self._ready,
            activity=self.activity,
        )
        refresher = threading.Thread(target=self._refresh, name="imgpipe-lazy-state", daemon=True)
        refresher.start()
        try:
            serve(ops, self.fd)
        finally:
            self.stopping.set()
            self.activity.wait_idle()
            with contextlib.suppress(OSError):
                self.update()


def build_server(
    fd: int,
    tree: Tree,
    plan: LazyPlan,
    *,
    store: Store,
    state_dir: Path,
    state: MountState,
    upstream: RangeReader,
    on_ready: Callable[[], None],
    background: bool,
) -> Server:
    """The server of ``plan``'s layers (in the child): a layer the content store holds
    is read from there (``complete``); the others through their cache
    (:mod:`imgpipe.lazy.cache`) from ``upstream``, prefetched and, with ``background``,
    fetched in full and committed (:mod:`imgpipe.lazy.background`)."""
    content = store.content
    local = SeekableRanges(content)
    caches: list[LayerCache | None] = []
    by_digest: dict[str, LayerCache] = {}
    for n, layer in enumerate(plan.layers):
        desc = layer.descriptor
        if content.exists(desc.digest):
            layer.fetcher = Fetcher(local)
            caches.append(None)
            state = state.with_layer(n, state=COMPLETE)
            continue
        cache = LayerCache(cache_dir(store.root, desc), desc)
        caches.append(cache)
        by_digest[str(desc.digest)] = cache
    ranges = CachingRanges(upstream, by_digest)
    for layer, maybe in zip(plan.layers, caches, strict=True):
        if maybe is not None:
            layer.fetcher = Fetcher(ranges)

    def fetched(n: int) -> int:
        return ranges.fetched(plan.layers[n].descriptor)

    def corrupt(n: int, start: int, end: int) -> None:
        bad = caches[n]
        if bad is not None and end > start:
            bad.forget(start, end)

    def converge(server: Server) -> None:
        server.update(background="running")
        try:
            Convergence(
                caches,
                [layer.toc() for layer in plan.layers],
                ranges,
                content,
                update=server.update,
                wait_idle=server.activity.wait_idle,
                stopping=server.stopping.is_set,
                background=background,
            ).run()
        finally:
            with contextlib.suppress(OSError):
                server.update(background="done")

    return Server(
        fd,
        tree,
        plan.layers,
        state_dir,
        state,
        on_ready=on_ready,
        fetched=fetched,
        on_corrupt=corrupt,
        background=converge,
    )


def _quiet_stdio(state_dir: Path) -> None:
    """No terminal: stdin and stdout on /dev/null, stderr (libfuse's own messages) to
    the state dir's server.log. The owner's terminal may go away; we do not."""
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(state_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def close_inherited(keep: set[int]) -> None:
    """Close every fd the owner had open but ``keep`` and stdio: the server must not
    hold the owner's pipes (a caller waiting for EOF, a container's stdio) or sockets
    (its registry connections) open."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def run_child(
    make: Callable[[], Server],
    state_dir: Path,
    record_failure: Callable[[str], None],
    *,
    keep: set[int] | None,
) -> NoReturn:
    """In the forked child: a new session, no inherited fds but ``keep`` (all of them
    when None), quiet stdio,
    ``make()`` the server, run it, and exit (0 when the mount ended, 1 after an error,
    recorded in the state file)."""
    code = 1
    try:
        os.setsid()
        if keep is not None:
            close_inherited(keep)
        # libfuse installs its SIGTERM/SIGINT/SIGHUP handlers only over the default
        # ones: the owner's (Python's, a blocked mask) must not keep the loop deaf.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _quiet_stdio(state_dir)
        make().run()
        code = 0
    except BaseException as e:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            record_failure(f"the FUSE server failed: {e}")
    finally:
        os._exit(code)
