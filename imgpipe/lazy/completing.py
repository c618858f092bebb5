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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from imgpipe.formats.digest import Digest
    from imgpipe.remote.options import TransportOptions

__all__ = ["COMPLETE_DIR", "completion_lock", "spawn_completion", "wait_completion"]

COMPLETE_DIR: Final = "lazy/complete"


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
            "options": asdict(options) if options is not None else None,
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
    from imgpipe.pipeline import Pipeline  # noqa: PLC0415
    from imgpipe.remote.options import TransportOptions  # noqa: PLC0415
    from imgpipe.store import Store  # noqa: PLC0415

    from .pulling import LABEL_LAZY_SOURCE  # noqa: PLC0415

    raw = settings["options"]
    options = TransportOptions(**raw) if isinstance(raw, dict) else None
    name = str(settings["name"])
    with Store(str(settings["root"])) as store:
        rec = Pipeline.pull(name=name, options=options).run(
            parse_transport(str(settings["source"])), store=store
        )
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
