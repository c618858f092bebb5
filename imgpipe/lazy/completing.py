"""The background completion of a lazy pull: a detached process that pulls the rest.

``pull --lazy`` (unless ``--lazy-background=false``) and a lazy ``run`` whose mount
ended before its layers were complete hand the image to :func:`spawn_completion`: a
process of its own (a new session, forked once more so that it is nobody's child, as the
``run -d`` monitor is) that runs an ordinary pull of the image by digest, which fetches
only the blobs the store lacks, each verified and committed, and then drops the image's
:data:`~.pulling.LABEL_LAZY_SOURCE`: the lazy pull has become a full pull.

While it works it holds an exclusive ``flock`` on ``<root>/lazy/complete/<hex>.lock``
(``hex``: the manifest's digest), taken by the caller before the process starts and
handed over by descriptor, so :func:`wait_completion` never misses it. What it prints
goes to ``<hex>.log`` beside it; a failure leaves the image lazy (a later run or pull
fetches what is missing) and the reason in that log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from imgpipe.formats.digest import Digest
    from imgpipe.image.tocfetch import RangeReader
    from imgpipe.remote.options import TransportOptions
    from imgpipe.store import Store

    from .plan import LazyPlan

__all__ = [
    "COMPLETE_DIR",
    "Converged",
    "completion_lock",
    "converge",
    "spawn_completion",
    "wait_completion",
]

COMPLETE_DIR: Final = "lazy/complete"


@dataclass(frozen=True)
class Converged:
    """One layer after :func:`converge`: its state, bytes fetched from upstream, error."""

    state: str
    fetched: int
    error: str = ""


def converge(
    store: Store, plan: LazyPlan, upstream: RangeReader, *, background: bool
) -> list[Converged]:
    """The engine's prefetch and (``background``) convergence, without a mount, through
    the layer caches: the files before each ``.prefetch.landmark``, then the rest of each
    layer, verified and committed (:mod:`imgpipe.lazy.background`). Per layer, bottom
    first. What was cached before is not fetched again."""
    from .background import Convergence  # noqa: PLC0415
    from .cache import CachingRanges, LayerCache, cache_dir  # noqa: PLC0415
    from .state import COMPLETE, LAZY  # noqa: PLC0415

    caches: list[LayerCache | None] = []
    by_digest: dict[str, LayerCache] = {}
    for layer in plan.layers:
        desc = layer.descriptor
        if store.content.exists(desc.digest):
            caches.append(None)
            continue
        cache = LayerCache(cache_dir(store.root, desc), desc)
        caches.append(cache)
        by_digest[str(desc.digest)] = cache
    ranges = CachingRanges(upstream, by_digest)
    states = [{"state": COMPLETE if c is None else LAZY, "error": ""} for c in caches]

    def update(n: int, **fields: object) -> None:
        states[n].update({k: str(v) for k, v in fields.items() if k in ("state", "error")})

    try:
        Convergence(
            caches,
            [layer.toc() for layer in plan.layers],
            ranges,
            store.content,
            update=update,
            wait_idle=lambda: None,
            stopping=lambda: False,
            background=background,
        ).run()
    finally:
        for used in by_digest.values():
            used.close()
    return [
        Converged(st["state"], ranges.fetched(layer.descriptor), st["error"])
        for st, layer in zip(states, plan.layers, strict=True)
    ]


def completion_lock(root: str | os.PathLike[str], manifest: Digest) -> Path:
    return Path(root) / COMPLETE_DIR / f"{manifest.encoded}.lock"


def spawn_completion(
    root: str | os.PathLike[str],
    source: str,
    name: str,
    manifest: Digest,
    options: TransportOptions | None = None,
) -> int:
    """Start the completion of the image ``name`` (``source``: where it comes from, by
    digest) in a detached process; its pid (of the first fork, already reaped)."""
    lock = completion_lock(root, manifest)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another completion of it: wait for it to end
        settings = {
            "root": str(root),
            "source": source,
            "name": name,
            "lock_fd": fd,
            "options": options._asdict() if options is not None else None,
        }
        with open(lock.with_suffix(".log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, json.dumps(settings)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(fd,),
                start_new_session=True,
                cwd="/",
            )
        proc.wait()  # the first process forks the worker and exits
        return proc.pid
    finally:
        os.close(fd)  # the worker holds the lock now (same open file description)


def wait_completion(root: str | os.PathLike[str], manifest: Digest) -> None:
    """Block until no completion of ``manifest`` runs (at once if none does)."""
    lock = completion_lock(root, manifest)
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)


def _complete(settings: dict[str, object]) -> int:
    from imgpipe.formats.reference import parse_transport  # noqa: PLC0415
    from imgpipe.image import BlobImage, load  # noqa: PLC0415
    from imgpipe.image.tocfetch import range_reader  # noqa: PLC0415
    from imgpipe.pipeline import Pipeline  # noqa: PLC0415
    from imgpipe.remote.options import TransportOptions  # noqa: PLC0415
    from imgpipe.store import Store  # noqa: PLC0415
    from imgpipe.transports import open_source  # noqa: PLC0415

    from .plan import lazy_plan  # noqa: PLC0415
    from .pulling import LABEL_LAZY_SOURCE  # noqa: PLC0415

    raw = settings["options"]
    options = TransportOptions(**raw) if isinstance(raw, dict) else None
    name = str(settings["name"])
    ref = parse_transport(str(settings["source"]))
    with Store(str(settings["root"])) as store:
        # through the layer caches first: what a lazy run or pull fetched is not fetched
        # again; then an ordinary pull by digest for anything left (nothing, normally)
        with open_source(ref, options=options) as src:
            image = load(src, src.resolve())
            if isinstance(image, BlobImage):
                plan = lazy_plan(image, src)
                if plan.fallback is None:
                    for layer in converge(store, plan, range_reader(src), background=True):
                        if layer.error:
                            print(f"imgpipe: lazy completion: {layer.error}", flush=True)
        rec = Pipeline.pull(name=name, options=options).run(ref, store=store)
        labels = {k: v for k, v in rec.labels.items() if k != LABEL_LAZY_SOURCE}
        store.db.put_image(name, rec.target, labels)
    print(f"imgpipe: lazy pull of {name} completed: every layer is in the store", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if os.fork() != 0:
        os._exit(0)
    settings = json.loads(argv[1])
    try:
        return _complete(settings)
    except Exception as e:
        print(f"imgpipe: error: lazy completion of {settings['name']}: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
