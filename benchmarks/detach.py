"""``imgpipe run -d`` against containerd's ``ctr run -d``: start latency and the memory of
the process that stays with each container (imgpipe's monitor, containerd-shim-runc-v2).

    .venv/bin/python benchmarks/detach.py [--runs 10] [--dir DIR]

As root, with runc (and containerd for the comparison: it is started here on a private
socket, root and state under ``--dir``, and stopped at the end; without it only imgpipe
is measured). The busybox fixture image is pulled into a fresh imgpipe root and
imported into containerd, and each is run once (so both are unpacked). Then, alternating
in one run:

- ``imgpipe --root R run -d busybox sh -c 'trap "exit 0" TERM; ...'`` until it returns
  (the container runs under its monitor), the monitor's RSS, then ``imgpipe stop`` (a
  SIGTERM the shell honours, returning once the monitor recorded the exit) and ``rm``;
- ``ctr run -d`` of the same command until it returns, the shim's RSS, then ``task delete
  --force`` (not timed: ctr has no stop that waits).

Reports median, min and max of each, in milliseconds, and the RSS medians in MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # fixtures/; the installed imgpipe comes first
IMGPIPE = Path(sys.executable).parent / "imgpipe"
SCRIPT = "trap 'exit 0' TERM; while :; do sleep 0.05; done"
_CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/ctd.sock"
[ttrpc]
  address = "{d}/ctd.ttrpc.sock"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
"""


def _timed(argv: Sequence[str | os.PathLike[str]]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def _containerd(work: Path) -> Iterator[list[str] | None]:
    """A containerd on a private socket; the ``ctr`` argv prefix, or None without it."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        yield None
        return
    d = work / "containerd"
    d.mkdir()
    (d / "config.toml").write_text(_CONFIG.format(d=d))
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", d / "config.toml"], stdout=log, stderr=log
        )
    ctr = ["ctr", "-a", str(d / "ctd.sock"), "-n", "bench"]
    try:
        deadline = time.monotonic() + 30
        # a daemon start-up, outside any measurement: ask until it answers
        while subprocess.run([*ctr, "version"], check=False, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("containerd did not start: see " + str(d / "log"))
            time.sleep(0.1)
        yield ctr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _shim_pid(container: str) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"containerd-shim-runc-v2 .*-id {container} "],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return int(out[0]) if out else 0


def _ms(xs: list[float]) -> str:
    return (
        f"median {statistics.median(xs) * 1000:.0f} ms "
        f"(min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=None)
    opts = ap.parse_args()
    from fixtures.build import build_all

    work = Path(tempfile.mkdtemp(prefix="bench-detach-", dir=opts.dir))
    try:
        fx = work / "fixtures"
        build_all(fx)
        root = work / "root"
        img = [IMGPIPE, "--root", root]
        subprocess.run([*img, "pull", f"oci:{fx / 'busybox'}:busybox"], check=True)
        subprocess.run([*img, "run", "--rm", "busybox", "true"], check=True)
        archive = work / "busybox.tar"
        subprocess.run(["tar", "-C", fx / "busybox", "-cf", archive, "."], check=True)
        with _containerd(work) as ctr:
            ref = "docker.io/library/busybox:latest"
            if ctr is not None:
                subprocess.run(
                    [*ctr, "images", "import", "--index-name", ref, archive],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            starts: list[float] = []
            stops: list[float] = []
            rss: list[float] = []
            c_starts: list[float] = []
            c_rss: list[float] = []
            for i in range(opts.runs):
                name = f"b{i}"
                starts.append(
                    _timed([*img, "run", "-d", "--name", name, "busybox", "sh", "-c", SCRIPT])
                )
                rec = json.loads((root / "tasks" / name / "imgpipe.json").read_text())
                rss.append(_rss_mib(rec["monitor_pid"]))
                stops.append(_timed([*img, "stop", name]))
                subprocess.run([*img, "rm", name], check=True, stdout=subprocess.DEVNULL)
                if ctr is None:
                    continue
                c_starts.append(_timed([*ctr, "run", "-d", ref, name, "sh", "-c", SCRIPT]))
                c_rss.append(_rss_mib(_shim_pid(name)))
                subprocess.run([*ctr, "task", "delete", "--force", name], check=True)
                subprocess.run([*ctr, "container", "delete", name], check=True)
        print(f"imgpipe run -d:  {_ms(starts)}; monitor RSS {statistics.median(rss):.1f} MiB")
        print(f"imgpipe stop:    {_ms(stops)} (SIGTERM honoured, exit recorded)")
        if c_starts:
            print(f"ctr run -d:      {_ms(c_starts)}; shim RSS {statistics.median(c_rss):.1f} MiB")
        else:
            print("ctr run -d:      containerd not installed, not measured")
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-R", work], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
