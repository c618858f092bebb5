"""Progress output: JSON lines for CI, rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import IMGPIPE, run_cli
from registry_fixtures import Registry

from imgpipe import Event, EventKind
from imgpipe.cli.output import (
    JsonLines,
    LineProgress,
    RichProgress,
    add_output_flags,
    close_observer,
    make_observer,
)
from imgpipe.formats.digest import Digest

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(n: int) -> Digest:
    return Digest.from_bytes(f"blob {n}".encode())


def blob_events(d: Digest, size: int) -> list[Event]:
    return [
        Event(EventKind.BLOB_START, d, LAYER, size),
        Event(EventKind.BLOB_PROGRESS, d, LAYER, size, offset=size // 2),
        Event(EventKind.BLOB_PROGRESS, d, LAYER, size, offset=size),
        Event(EventKind.BLOB_DONE, d, LAYER, size),
    ]


def test_json_lines_one_object_per_event_from_many_threads() -> None:
    out = io.StringIO()
    obs = JsonLines(out, interval=0)
    digests = [digest(i) for i in range(8)]

    def worker(d: Digest) -> None:
        for e in blob_events(d, 1000):
            obs(e)

    threads = [threading.Thread(target=worker, args=(d,)) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 * len(digests)
    events = [json.loads(line) for line in lines]  # every line is one whole object
    assert {e["digest"] for e in events} == {str(d) for d in digests}
    done = [e for e in events if e["event"] == "blob.done"]
    assert len(done) == len(digests)
    assert all(e["mediaType"] == LAYER and e["size"] == 1000 for e in done)
    progress = [e for e in events if e["event"] == "blob.progress"]
    assert {e["offset"] for e in progress} == {500, 1000}


def test_json_progress_is_rate_limited_per_blob_but_nothing_else() -> None:
    out = io.StringIO()
    obs = JsonLines(out, interval=3600)
    a, b = digest(1), digest(2)
    for d in (a, b):
        for e in blob_events(d, 10):
            obs(e)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [(e["event"], e["digest"]) for e in events]
    # one progress line per blob within the interval; start and done always
    for d in (str(a), str(b)):
        assert kinds.count(("blob.progress", d)) == 1
        assert kinds.count(("blob.start", d)) == 1
        assert kinds.count(("blob.done", d)) == 1


def test_make_observer_choices(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-q", "--quiet", action="store_true")
    add_output_flags(parser)
    assert make_observer(parser.parse_args(["-q"])) is None
    assert isinstance(make_observer(parser.parse_args(["--json"])), JsonLines)
    with (tmp_path / "log").open("w") as f:
        assert isinstance(make_observer(parser.parse_args([]), stream=f), LineProgress)
    # a real terminal (a pty) gets the live display
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            obs = make_observer(parser.parse_args([]), stream=tty)
            assert isinstance(obs, RichProgress)
            close_observer(obs)
    finally:
        os.close(master)
    close_observer(None)  # nothing to close is fine


def test_rich_bars_render_each_blob_and_state() -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    obs = RichProgress(console=console)
    fresh, cached, config = digest(1), digest(2), digest(3)
    obs(Event(EventKind.RESOLVED, digest(9), MANIFEST, 500, "127.0.0.1:5000/a:b"))
    obs(Event(EventKind.BLOB_EXISTS, cached, LAYER, 2_000_000))
    for e in blob_events(fresh, 3_000_000):
        obs(e)
    obs(Event(EventKind.BLOB_START, config, CONFIG, 1000))
    obs(Event(EventKind.BLOB_DONE, config, CONFIG, 1000))
    obs(Event(EventKind.IMAGE_RECORDED, digest(9), MANIFEST, 500, "127.0.0.1:5000/a:b"))
    obs.close()
    obs.close()  # idempotent
    obs(Event(EventKind.BLOB_DONE, fresh, LAYER, 1))  # after close: ignored, no error
    text = buf.getvalue()
    assert f"resolved 127.0.0.1:5000/a:b: {digest(9)}" in text
    final = text[text.rindex(cached.short()) - 200 :]  # the last frame of the display
    assert "already exists" in final
    assert fresh.short() in final and config.short() in final
    assert final.count("done") >= 2
    assert "3.0/3.0 MB" in final


def test_rich_is_not_imported_without_a_terminal() -> None:
    code = (
        "import sys, argparse\n"
        "from imgpipe.cli.output import make_observer\n"
        "obs = make_observer(argparse.Namespace(quiet=False, json=False))\n"
        "print(type(obs).__name__, 'rich' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LineProgress", "False"]


def _json_events(stdout: str) -> list[dict[str, object]]:
    lines = stdout.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]


def test_cli_pull_json_from_layout(fixture_dir: Path, tmp_path: Path) -> None:
    r = run_cli("pull", "--json", f"oci:{fixture_dir / 'layered'}:layered", root=tmp_path / "root")
    assert r.returncode == 0, r.stderr
    events = _json_events(r.stdout)
    done = {e["digest"] for e in events if e["event"] == "blob.done"}
    index = json.loads((fixture_dir / "layered" / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(
        (fixture_dir / "layered/blobs/sha256" / manifest_digest.split(":")[1]).read_text()
    )
    assert {layer["digest"] for layer in manifest["layers"]} <= done
    assert events[-1]["event"] == "result"
    assert events[-1]["digest"] == manifest_digest


def test_cli_pull_json_from_registry(registry: Registry, fixture_dir: Path, tmp_path: Path) -> None:
    registry.push_layout(fixture_dir / "layered", "layered", "progress/layered", "v1")
    expected = registry.manifest_digest("progress/layered", "v1")
    r = run_cli("pull", "--json", registry.ref("progress/layered", "v1"), root=tmp_path / "root")
    assert r.returncode == 0, r.stderr
    events = _json_events(r.stdout)
    kinds = [e["event"] for e in events]
    assert "resolved" in kinds and "blob.done" in kinds
    assert all("digest" in e for e in events if str(e["event"]).startswith("blob."))
    assert events[-1] == {**events[-1], "event": "result", "digest": expected}
    # a second pull: every blob already there
    r = run_cli("pull", "--json", registry.ref("progress/layered", "v1"), root=tmp_path / "root")
    assert r.returncode == 0, r.stderr
    kinds = [e["event"] for e in _json_events(r.stdout)]
    assert "blob.exists" in kinds and "blob.start" not in kinds


def test_cli_pull_plain_lines_and_quiet(
    registry: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    registry.push_layout(fixture_dir / "busybox", "busybox", "progress/busybox", "v1")
    ref = registry.ref("progress/busybox", "v1")
    r = run_cli("pull", ref, root=tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "done" in r.stderr  # not a terminal: plain lines on stderr
    assert "\x1b[" not in r.stderr  # and no terminal control sequences
    r = run_cli("--quiet", "pull", ref, root=tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 1


def test_cli_pull_on_a_terminal_draws_bars(
    registry: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    """stderr on a pty: the live display (cursor movement), ending with every blob done."""
    registry.push_layout(fixture_dir / "layered", "layered", "progress/tty", "v1")
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [IMGPIPE, "--root", str(tmp_path / "root"), "pull", registry.ref("progress/tty", "v1")],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in screen  # drawn, not printed line by line
    assert "done" in screen
    assert len(stdout.splitlines()) == 1


# -- the end of a display: final lines below the bars, the summary, clearing --------------


def _no_escapes(text: str) -> str:
    """``text`` without terminal control sequences (``ESC[?25l`` has a ``?`` of its own)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _console() -> tuple[io.StringIO, object]:
    from rich.console import Console

    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=True, width=120, color_system=None)


def test_rich_final_lines_and_summary_come_below_the_bars() -> None:
    buf, console = _console()
    obs = RichProgress(console=console)  # type: ignore[arg-type]
    small, cached = digest(1), digest(2)
    obs(Event(EventKind.RESOLVED, digest(9), MANIFEST, 500, "127.0.0.1:5000/a:b"))
    obs(Event(EventKind.BLOB_EXISTS, cached, LAYER, 2_000_000))
    # a blob too small for rich to sample a speed: no "?" column
    obs(Event(EventKind.BLOB_START, small, CONFIG, 300))
    obs(Event(EventKind.BLOB_DONE, small, CONFIG, 300))
    obs(Event(EventKind.IMAGE_RECORDED, digest(9), MANIFEST, 500, "127.0.0.1:5000/a:b"))
    obs.close()
    text = buf.getvalue()
    last_bar = text.rindex(small.short())
    final = text.index(f"image 127.0.0.1:5000/a:b: {digest(9)}")
    assert final > last_bar
    summary = text[final:].splitlines()[1]
    assert summary.startswith("elapsed: ")
    assert "total: 300 B (" in summary
    assert summary.endswith("1 blob, 1 already present")
    assert "?" not in _no_escapes(text)


def test_until_recorded_erases_the_bars_and_ignores_what_follows() -> None:
    buf, console = _console()
    obs = RichProgress(console=console, until_recorded=True)  # type: ignore[arg-type]
    d = digest(1)
    for e in blob_events(d, 3_000_000):
        obs(e)
    obs(Event(EventKind.IMAGE_RECORDED, digest(9), MANIFEST, 500, "alpine"))
    drawn = buf.getvalue()
    # Live.stop went back over the rows (cursor up, erase line), then the final lines
    tail = drawn[drawn.rindex(d.short()) :]
    assert "\x1b[1A\x1b[2K" in tail or "\x1b[2K\x1b[1A" in tail
    assert tail.rindex("\x1b[2K") < tail.index(f"image alpine: {digest(9)}")
    assert "elapsed: " in tail
    obs(Event(EventKind.BLOB_DONE, digest(3), LAYER, 10))  # after the end: nothing drawn
    obs.close()
    assert buf.getvalue() == drawn


def test_clear_progress_hook_works_on_every_observer() -> None:
    from imgpipe.cli.output import clear_progress

    buf, console = _console()
    rich = RichProgress(console=console)  # type: ignore[arg-type]
    for e in blob_events(digest(1), 10):
        rich(e)
    clear_progress(rich)
    assert "elapsed: " in buf.getvalue()
    lines = io.StringIO()
    plain = LineProgress(lines)
    for e in blob_events(digest(2), 10):
        plain(e)
    clear_progress(plain)
    clear_progress(plain)  # idempotent: one summary
    assert lines.getvalue().count("elapsed: ") == 1
    clear_progress(None)
    clear_progress(JsonLines(io.StringIO()))


def test_plain_lines_end_with_the_summary_counting_only_new_bytes() -> None:
    out = io.StringIO()
    obs = LineProgress(out)
    resumed, fresh, cached = digest(1), digest(2), digest(3)
    obs(Event(EventKind.BLOB_START, resumed, LAYER, 3000, offset=1000))  # resumed at 1000
    obs(Event(EventKind.BLOB_DONE, resumed, LAYER, 3000))
    for e in blob_events(fresh, 500):
        obs(e)
    obs(Event(EventKind.BLOB_EXISTS, cached, LAYER, 10_000))
    obs.close()
    *_, summary = out.getvalue().splitlines()
    assert summary.startswith("elapsed: ")
    assert " total: 2.5 kB (" in summary  # 2000 resumed + 500, not the 10 kB already there
    assert summary.endswith("2 blobs, 1 already present")


def test_no_summary_when_nothing_moved() -> None:
    out = io.StringIO()
    obs = LineProgress(out)
    obs(Event(EventKind.RESOLVED, digest(1), MANIFEST, 10, "x"))
    obs.close()
    assert "elapsed" not in out.getvalue()


def _pty_run(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one pty, as on a terminal; (status, screen)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        argv,
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_pull_on_a_terminal_ends_with_the_image_and_the_summary_below_the_bars(
    registry: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    registry.push_layout(fixture_dir / "layered", "layered", "progress/summary", "v1")
    ref = registry.ref("progress/summary", "v1")
    code, screen = _pty_run([str(IMGPIPE), "--root", str(tmp_path / "root"), "pull", ref])
    assert code == 0, screen
    final = screen.rindex(f"image {ref}: sha256:")
    assert final > screen.rindex("done")  # below the last frame of the bars
    summary = screen.index("elapsed: ", final)
    assert re.match(
        r"elapsed: [\d.]+s  total: [\d.]+ [kMG]?B \([\d.]+ [kMG]?B/s\)", screen[summary:]
    )
    assert screen.index(ref + " sha256:", summary) > summary  # stdout's result line last
    assert "?" not in _no_escapes(screen)


def test_run_on_a_terminal_erases_the_bars_before_the_container_prints(
    registry: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    import shutil

    if os.geteuid() != 0 or shutil.which("runc") is None:
        import pytest

        pytest.skip("running containers needs root and runc (CI runs as root)")
    registry.push_layout(fixture_dir / "busybox", "busybox", "progress/run", "v1")
    ref = registry.ref("progress/run", "v1")
    argv = [str(IMGPIPE), "--root", str(tmp_path / "root"), "run", "--rm", ref]
    code, screen = _pty_run([*argv, "echo", "hello from the container"])
    assert code == 0, screen
    out = screen.index("hello from the container")
    # the bars were erased (cursor up, erase line) before the pull's last lines and the
    # container's output, which starts on a line of its own
    assert screen.rindex("\x1b[2K", 0, out) < screen.index(f"image {ref}: sha256:")
    assert screen[:out].endswith("\n")
    assert screen.count("hello from the container") == 1
