"""A second process for the content store's multi-process tests.

Talks to the test over its stdin/stdout, one line per event, so the test can synchronise
on what this process has done (never on time):

``hold ROOT REF PAYLOAD N``
    Open a writer for REF (expected digest and total from the PAYLOAD file), write the
    first N bytes, print ``written <offset>`` and wait for a line on stdin. ``commit``
    writes the rest and commits (prints ``committed``); anything else (or EOF) exits and
    leaves the ingest. The test may also SIGKILL it while it waits.

``ingest ROOT REF PAYLOAD TIMEOUT``
    ``ContentStore.ingest`` of the PAYLOAD file under REF, with the writer timeout set to
    TIMEOUT. Prints ``waiting`` the first time it has to back off for the lock, then one
    of ``result True``, ``result False`` or ``conflict``.

``ready``
    With ``ingest``: print ``ready`` and wait for a line on stdin before starting, so a
    test can release several processes at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgpipe.content import ContentStore
from imgpipe.content import locks as store
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import Conflict


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def hold(root: str, ref: str, payload_path: str, n: int) -> int:
    payload = Path(payload_path).read_bytes()
    digest = Digest.from_bytes(payload)
    cs = ContentStore(root)
    w = cs.writer(ref, expected=digest, total=len(payload), timeout=0)
    # Several small writes, so a kill lands between writes of a real copy loop.
    pos = w.offset
    while pos < n:
        step = min(4096, n - pos)
        w.write(payload[pos : pos + step])
        pos += step
    say(f"written {w.offset}")
    line = sys.stdin.readline()
    if line.strip() != "commit":
        w.close()
        return 0
    w.write(payload[w.offset :])
    w.commit(len(payload), digest)
    say("committed")
    return 0


def ingest(root: str, ref: str, payload_path: str, timeout: float, wait_for_go: bool) -> int:
    payload_file = Path(payload_path)
    payload = payload_file.read_bytes()
    digest = Digest.from_bytes(payload)
    real_sleep = store._backoff_sleep
    told = False

    def observed_sleep(seconds: float) -> None:
        nonlocal told
        if not told:
            told = True
            say("waiting")
        real_sleep(seconds)

    store._backoff_sleep = observed_sleep
    if wait_for_go:
        say("ready")
        sys.stdin.readline()
    cs = ContentStore(root)
    try:
        with payload_file.open("rb") as f:
            written = cs.ingest(ref, f, digest=digest, size=len(payload), timeout=timeout)
    except Conflict:
        say("conflict")
        return 0
    say(f"result {written}")
    return 0


def main(argv: list[str]) -> int:
    cmd, root, ref, payload = argv[:4]
    if cmd == "hold":
        return hold(root, ref, payload, int(argv[4]))
    if cmd == "ingest":
        return ingest(root, ref, payload, float(argv[4]), "ready" in argv[5:])
    raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
