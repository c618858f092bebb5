"""FUSE binding choice for the lazy-pull filesystem: mfusepy vs pyfuse3, measured.

    python3 -m venv /tmp/fb && /tmp/fb/bin/pip install mfusepy pyfuse3
    /tmp/fb/bin/python benchmarks/fuse_bindings.py [--rounds 5]
        [--bindings mfusepy,pyfuse3,pyfuse3-thread] [--slow-ms 2]

Needs root, /dev/fuse, libfuse3 and a Python that has the bindings (a scratch venv: they
are not the project's dependencies). Each binding serves the same read-only tree from
memory: 10,000 small files (0-4 KiB) in 100 directories, plus one 256 MiB file of
pseudo-random bytes (generated once, in /dev/shm, mmapped by the server) and the same
file again as /slow, whose every read sleeps --slow-ms in the server (a stand-in for a
Range fetch: shows whether the binding serves a synchronous, blocking reader from many
threads at once). "pyfuse3-thread" is pyfuse3 with every read handed to a worker thread
(trio.to_thread.run_sync), the way a synchronous reader (RangedLayer) has to be called
from pyfuse3's trio loop so that a fetch does not stop the whole filesystem.

The mount is made the way imgpipe's lazy mount is: this process (the owner) opens
/dev/fuse and calls mount(2) itself ("fd=N,rootmode=40000,..."), then starts the server
as a fresh interpreter in its own session, which serves "/dev/fd/N" (no second mount).
Every trial is a new mount and a new server, so no kernel cache outlives a trial; entry
and attr timeouts are 60 s in both, the page cache is dropped at open (keep_cache off).

Per trial: start-up (process start -> the first lstat inside the mount answered), a stat
walk (os.walk + lstat of every entry), open+read+close of every small file, a
sequential read of the big file with 128 KiB reads, 20,000 random 4 KiB preads
(POSIX_FADV_RANDOM: one FUSE READ each), 2,000 random 4 KiB preads of /slow from 8
threads, then the server's RSS. Bindings alternate (order reversed every round: ABC CBA);
medians of the rounds with
min-max. Every byte read is compared with the source; the walk's entry count is checked.
"""

from __future__ import annotations

import time

_T_PROCESS = time.monotonic()  # the server's own start, first thing

import argparse  # noqa: E402
import ctypes  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

NDIRS, PER_DIR = 100, 100
BIG = 256 << 20
SEQ_CHUNK = 128 << 10
RAND_N, RAND_SIZE = 20_000, 4096
SLOW_N, SLOW_THREADS = 2_000, 8
TIMEOUT = 60.0  # entry/attr timeouts, both bindings
MTIME_NS = 1_764_000_000_000_000_000
MS_RDONLY, MS_NOSUID, MS_NODEV, MNT_DETACH = 1, 2, 4, 2
S_IFDIR, S_IFREG = 0o040000, 0o100000
# counters shared with the parent through a small /dev/shm file: metadata ops, reads, bytes
C_META, C_READ, C_BYTES = 0, 1, 2


def small_size(i: int) -> int:
    return (i * 7919) % 4097


def small_off(i: int) -> int:
    return (i * 2654435761) % (BIG - 4096)


def tree() -> list[tuple[str, str, int, int]]:
    """(dir, name, offset in the data, size) of every small file."""
    out = []
    for d in range(NDIRS):
        for j in range(PER_DIR):
            i = d * PER_DIR + j
            out.append((f"d{d:02d}", f"f{j:03d}", small_off(i), small_size(i)))
    return out


# ----------------------------------------------------------------------------- servers


def serve_mfusepy(fd: int, data: mmap.mmap, ctr: memoryview, slow_s: float) -> None:
    mfusepy: Any = importlib.import_module("mfusepy")
    t_import = time.monotonic()
    err = mfusepy.FuseOSError

    def st(ino: int, mode: int, nlink: int, size: int) -> dict[str, int]:
        return {
            "st_ino": ino,
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_uid": 0,
            "st_gid": 0,
            "st_atime": MTIME_NS,
            "st_mtime": MTIME_NS,
            "st_ctime": MTIME_NS,
        }

    attrs: dict[str, dict[str, int]] = {"/": st(1, S_IFDIR | 0o555, NDIRS + 2, 0)}
    files: dict[str, tuple[int, int]] = {"/big": (0, BIG), "/slow": (0, BIG)}
    attrs["/big"] = st(2, S_IFREG | 0o444, 1, BIG)
    attrs["/slow"] = st(3, S_IFREG | 0o444, 1, BIG)
    # entries with their attrs: with use_ino, a bare name would list as d_ino 0 (skipped)
    Entry = tuple[str, dict[str, int], int]
    kids: dict[str, list[Entry]] = {
        "/": [
            (".", attrs["/"], 0),
            ("..", attrs["/"], 0),
            ("big", attrs["/big"], 0),
            ("slow", attrs["/slow"], 0),
        ]
    }
    ino = 4
    for d, name, off, size in tree():
        dp = "/" + d
        if dp not in attrs:
            attrs[dp] = st(ino, S_IFDIR | 0o555, 2, 0)
            kids[dp] = [(".", attrs[dp], 0), ("..", attrs["/"], 0)]
            kids["/"].append((d, attrs[dp], 0))
            ino += 1
        p = f"{dp}/{name}"
        attrs[p] = st(ino, S_IFREG | 0o444, 1, size)
        files[p] = (off, size)
        kids[dp].append((name, attrs[p], 0))
        ino += 1

    class Ops(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def init_with_config(self, conn: Any, config: Any) -> None:
            config.entry_timeout = config.attr_timeout = config.negative_timeout = TIMEOUT
            config.use_ino = 1

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            ctr[C_META] += 1
            try:
                return attrs[path]
            except KeyError:
                raise err(2) from None  # ENOENT

        def readdir(self, path: str, fh: int) -> list[Entry]:
            ctr[C_META] += 1
            return kids[path]

        def open(self, path: str, flags: int) -> int:
            ctr[C_META] += 1
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise err(30)  # EROFS
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            base, n = files[path]
            end = min(n, offset + size)
            if offset >= end:
                return b""
            if path == "/slow":
                time.sleep(slow_s)
            ctr[C_READ] += 1
            ctr[C_BYTES] += end - offset
            return data[base + offset : base + end]

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": BIG // 4096, "f_namemax": 255}

    ready(t_import)
    # extra libfuse options to try, e.g. FUSEBENCH_MFUSEPY_OPTS='{"max_threads": 32}'
    extra = json.loads(os.environ.get("FUSEBENCH_MFUSEPY_OPTS", "{}"))
    mfusepy.FUSE(Ops(), f"/dev/fd/{fd}", foreground=True, **extra)


def serve_pyfuse3(
    fd: int, data: mmap.mmap, ctr: memoryview, slow_s: float, threaded: bool = False
) -> None:
    pyfuse3: Any = importlib.import_module("pyfuse3")
    trio: Any = importlib.import_module("trio")
    t_import = time.monotonic()
    fuse_error = pyfuse3.FUSEError

    def st(ino: int, mode: int, nlink: int, size: int) -> Any:
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_nlink, a.st_size = ino, mode, nlink, size
        a.st_uid = a.st_gid = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = MTIME_NS
        a.st_blksize, a.st_blocks = 4096, (size + 511) // 512
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    root = pyfuse3.ROOT_INODE
    attrs: dict[int, Any] = {root: st(root, S_IFDIR | 0o555, NDIRS + 2, 0)}
    kids: dict[int, list[tuple[bytes, int]]] = {root: [(b"big", 2), (b"slow", 3)]}
    files: dict[int, tuple[int, int]] = {2: (0, BIG), 3: (0, BIG)}
    attrs[2] = st(2, S_IFREG | 0o444, 1, BIG)
    attrs[3] = st(3, S_IFREG | 0o444, 1, BIG)
    dirs: dict[str, int] = {}
    ino = 4
    for d, name, off, size in tree():
        if d not in dirs:
            dirs[d] = ino
            attrs[ino] = st(ino, S_IFDIR | 0o555, 2, 0)
            kids[ino] = []
            kids[root].append((d.encode(), ino))
            ino += 1
        attrs[ino] = st(ino, S_IFREG | 0o444, 1, size)
        files[ino] = (off, size)
        kids[dirs[d]].append((name.encode(), ino))
        ino += 1
    byname = {parent: dict(entries) for parent, entries in kids.items()}
    parent_of = {child: parent for parent, entries in kids.items() for _, child in entries}
    slow_ino = 3

    def slow_read(a: int, b: int) -> bytes:
        time.sleep(slow_s)
        return data[a:b]

    def sync_read(a: int, b: int) -> bytes:
        return data[a:b]

    class Ops(pyfuse3.Operations):  # type: ignore[misc]
        async def lookup(self, parent: int, name: bytes, ctx: Any) -> Any:
            ctr[C_META] += 1
            if name == b".":
                return attrs[parent]
            if name == b"..":
                return attrs[parent_of.get(parent, root)]
            try:
                return attrs[byname[parent][name]]
            except KeyError:
                raise fuse_error(2) from None

        async def getattr(self, inode: int, ctx: Any) -> Any:
            ctr[C_META] += 1
            return attrs[inode]

        async def opendir(self, inode: int, ctx: Any) -> int:
            ctr[C_META] += 1
            return inode

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            ctr[C_META] += 1
            entries = kids[fh]
            for i in range(start_id, len(entries)):
                name, child = entries[i]
                if not pyfuse3.readdir_reply(token, name, attrs[child], i + 1):
                    break

        async def releasedir(self, fh: int) -> None:
            pass

        async def open(self, inode: int, flags: int, ctx: Any) -> Any:
            ctr[C_META] += 1
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise fuse_error(30)
            return pyfuse3.FileInfo(fh=inode, keep_cache=False)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            base, n = files[fh]
            end = min(n, off + size)
            if off >= end:
                return b""
            ctr[C_READ] += 1
            ctr[C_BYTES] += end - off
            if fh == slow_ino:  # a blocking reader must leave trio's thread
                return await trio.to_thread.run_sync(slow_read, base + off, base + end)  # type: ignore[no-any-return]
            if threaded:  # every read through a synchronous reader on a worker thread
                return await trio.to_thread.run_sync(sync_read, base + off, base + end)  # type: ignore[no-any-return]
            return data[base + off : base + end]

        async def release(self, fh: int) -> None:
            pass

        async def forget(self, inode_list: Any) -> None:
            pass

        async def statfs(self, ctx: Any) -> Any:
            s = pyfuse3.StatvfsData()
            s.f_bsize = s.f_frsize = 4096
            s.f_blocks, s.f_namemax = BIG // 4096, 255
            return s

    options = set(pyfuse3.default_options) | {"fsname=fusebench"}
    pyfuse3.init(Ops(), f"/dev/fd/{fd}", options)
    ready(t_import)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


def ready(t_import: float) -> None:
    print(
        json.dumps({"process": _T_PROCESS, "import": t_import, "ready": time.monotonic()}),
        flush=True,
    )


def serve(binding: str, fd: int, datafile: str, ctrfile: str, slow_ms: float) -> None:
    with open(datafile, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    with open(ctrfile, "r+b") as f:
        ctr = memoryview(mmap.mmap(f.fileno(), 64)).cast("Q")
    if binding == "pyfuse3-thread":
        serve_pyfuse3(fd, data, ctr, slow_ms / 1000, threaded=True)
    else:
        {"mfusepy": serve_mfusepy, "pyfuse3": serve_pyfuse3}[binding](fd, data, ctr, slow_ms / 1000)


# ----------------------------------------------------------------------------- owner

libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def conn_id(mnt: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(mnt):
            return f[2].split(":")[1]
    raise RuntimeError(f"{mnt} not in mountinfo")


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
            out[k] = int(v.split()[0])
    return out


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Bench:
    python: str
    mnt: Path
    datafile: str
    data: mmap.mmap
    ctrfile: str
    ctr: memoryview
    slow_ms: float


def trial(bench: Bench, binding: str, seed: int) -> dict[str, float]:
    python, mnt, data, ctr = bench.python, bench.mnt, bench.data, bench.ctr
    datafile, ctrfile, slow_ms = bench.datafile, bench.ctrfile, bench.slow_ms
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
    check(
        libc.mount(
            b"fusebench",
            str(mnt).encode(),
            b"fuse.fusebench",
            MS_RDONLY | MS_NOSUID | MS_NODEV,
            opts.encode(),
        ),
        "mount",
    )
    ctr[C_META] = ctr[C_READ] = ctr[C_BYTES] = 0
    log = (mnt.parent / f"{mnt.name}-{binding}.log").open("ab")
    proc: subprocess.Popen[bytes] | None = None
    r: dict[str, float] = {}
    try:
        answered = threading.Event()
        conn = conn_id(mnt)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [python, __file__, "serve", binding, str(fd), datafile, ctrfile, str(slow_ms)],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )

        def watchdog(p: subprocess.Popen[bytes]) -> None:  # a dead server must not hang us
            p.wait()
            if not answered.is_set():
                Path(f"/sys/fs/fuse/connections/{conn}/abort").write_text("1")

        threading.Thread(target=watchdog, args=(proc,), daemon=True).start()
        os.lstat(mnt / "d00" / "f000")  # blocks until the server has answered INIT + LOOKUP
        r["startup_ms"] = (time.monotonic() - t0) * 1000
        answered.set()
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        r["import_ms"] = (info["import"] - info["process"]) * 1000
        r["to_ready_ms"] = (info["ready"] - t0) * 1000
        pid = proc.pid

        def phase(name: str, fn: Any) -> None:
            m0, c0 = ctr[C_META], cpu_s(pid)
            t = time.monotonic()
            fn()
            r[name + "_s"] = time.monotonic() - t
            r[name + "_cpu"] = cpu_s(pid) - c0
            r[name + "_meta"] = ctr[C_META] - m0

        def walk() -> None:
            n = 0
            for top, dirs, names in os.walk(mnt):
                for e in dirs + names:
                    os.lstat(os.path.join(top, e))
                    n += 1
            assert n == NDIRS + NDIRS * PER_DIR + 2, n

        def small() -> None:
            for d, name, off, size in tree():
                with open(mnt / d / name, "rb") as f:
                    got = f.read(8192)
                assert got == data[off : off + size], (d, name)

        phase("walk", walk)
        phase("small", small)

        big = bytearray(BIG)
        view = memoryview(big)

        def seq() -> None:
            with open(mnt / "big", "rb", buffering=0) as f:
                pos = 0
                while pos < BIG and (n := f.readinto(view[pos : pos + SEQ_CHUNK])):
                    pos += n
            assert pos == BIG

        r0 = ctr[C_READ]
        phase("seq", seq)
        r["seq_req_kib"] = BIG / 1024 / max(1, ctr[C_READ] - r0)
        assert big == data[:], "big file differs"
        view.release()
        del big
        rng = random.Random(seed)
        offs = [rng.randrange(BIG // RAND_SIZE) * RAND_SIZE for _ in range(RAND_N)]
        got: list[bytes] = []

        def rand() -> None:
            f = os.open(mnt / "big", os.O_RDONLY)
            os.posix_fadvise(f, 0, 0, os.POSIX_FADV_RANDOM)
            got.extend(os.pread(f, RAND_SIZE, o) for o in offs)
            os.close(f)

        r0 = ctr[C_READ]
        phase("rand", rand)
        r["rand_reqs"] = ctr[C_READ] - r0
        assert all(g == data[o : o + RAND_SIZE] for g, o in zip(got, offs, strict=True)), (
            "random reads differ"
        )
        soffs = [rng.randrange(BIG // RAND_SIZE) * RAND_SIZE for _ in range(SLOW_N)]
        bad: list[int] = []

        def slow() -> None:
            f = os.open(mnt / "slow", os.O_RDONLY)
            os.posix_fadvise(f, 0, 0, os.POSIX_FADV_RANDOM)

            def worker(k: int) -> None:
                for o in soffs[k::SLOW_THREADS]:
                    if os.pread(f, RAND_SIZE, o) != data[o : o + RAND_SIZE]:
                        bad.append(o)

            ts = [threading.Thread(target=worker, args=(k,)) for k in range(SLOW_THREADS)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            os.close(f)

        phase("slow", slow)
        assert not bad, "slow reads differ"
        s = proc_status(pid)
        r.update(
            rss_mib=s["VmRSS"] / 1024,
            anon_mib=s["RssAnon"] / 1024,
            hwm_mib=s["VmHWM"] / 1024,
            threads=s["Threads"],
        )
    finally:
        check(libc.umount2(str(mnt).encode(), MNT_DETACH), "umount2")
        if proc is not None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.close(fd)
        log.close()
    return r


def start_ms(python: str, code: str, env: dict[str, str] | None = None) -> float:
    t = time.monotonic()
    subprocess.run([python, "-c", code], check=True, env={**os.environ, **(env or {})})
    return (time.monotonic() - t) * 1000


IMPORTS = {  # label -> (code, extra environment); python -c, whole process
    "bare `python -c pass`": ("pass", {}),
    "`import mfusepy`": ("import mfusepy", {}),
    "`import mfusepy`, FUSE_LIBRARY_PATH=libfuse3.so.3 (no find_library)": (
        "import mfusepy",
        {"FUSE_LIBRARY_PATH": "libfuse3.so.3"},
    ),
    "`import pyfuse3` (imports trio)": ("import pyfuse3", {}),
}


ROWS = [  # key, label, scale, format
    ("startup_ms", "start-up: process start -> first lstat answered, ms", 1, "{:.0f}"),
    ("import_ms", "  of which: import of the binding, ms", 1, "{:.0f}"),
    ("walk_s", "stat walk, 10,102 entries (os.walk + lstat), s", 1, "{:.3f}"),
    ("walk_meta", "  server metadata requests during the walk", 1, "{:.0f}"),
    ("walk_cpu", "  server CPU, s", 1, "{:.2f}"),
    ("small_s", "open+read+close 10,000 small files, s", 1, "{:.3f}"),
    ("small_meta", "  server metadata requests", 1, "{:.0f}"),
    ("small_cpu", "  server CPU, s", 1, "{:.2f}"),
    ("seq_mbps", "sequential read 256 MiB, 128 KiB reads, MB/s", 1, "{:.0f}"),
    ("seq_req_kib", "  KiB per FUSE READ", 1, "{:.0f}"),
    ("seq_cpu", "  server CPU, s", 1, "{:.2f}"),
    ("rand_rps", "random 4 KiB preads, 1 thread, reads/s", 1, "{:.0f}"),
    ("rand_us", "  us per read", 1, "{:.1f}"),
    ("rand_cpu", "  server CPU for 20,000 reads, s", 1, "{:.2f}"),
    (
        "slow_rps",
        f"random 4 KiB preads, {SLOW_THREADS} threads, 2 ms blocking source, reads/s",
        1,
        "{:.0f}",
    ),
    ("slow_cpu", "  server CPU, s", 1, "{:.2f}"),
    ("anon_mib", "server RSS anon (heap: Python + binding + tree), MiB", 1, "{:.1f}"),
    ("rss_mib", "server RSS total (incl. mmapped data touched), MiB", 1, "{:.0f}"),
    ("threads", "server threads at the end", 1, "{:.0f}"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bindings", default="mfusepy,pyfuse3,pyfuse3-thread")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--slow-ms", type=float, default=2.0)
    args = ap.parse_args()
    bindings = args.bindings.split(",")
    tag = f"fusebench-{os.getpid()}"
    datafile, ctrfile = f"/dev/shm/{tag}.bin", f"/dev/shm/{tag}.ctr"
    mnt = Path(f"/tmp/{tag}-mnt")
    mnt.mkdir()
    try:
        gen = random.Random(20261203)
        with open(datafile, "wb") as out:
            for _ in range(BIG >> 20):
                out.write(gen.randbytes(1 << 20))
        Path(ctrfile).write_bytes(bytes(64))
        with open(datafile, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        with open(ctrfile, "r+b") as rw:
            ctr = memoryview(mmap.mmap(rw.fileno(), 64)).cast("Q")
        bench = Bench(args.python, mnt, datafile, data, ctrfile, ctr, args.slow_ms)
        res: dict[str, list[dict[str, float]]] = {b: [] for b in bindings}
        imp: dict[str, list[float]] = {k: [] for k in IMPORTS}
        up = [os.getloadavg()]
        for rnd in range(args.rounds):
            for k, (code, env) in IMPORTS.items():
                imp[k].append(start_ms(args.python, code, env))
            for b in bindings if rnd % 2 == 0 else bindings[::-1]:
                r = trial(bench, b, seed=rnd)
                r["seq_mbps"] = BIG / r["seq_s"] / 1e6
                r["rand_rps"] = RAND_N / r["rand_s"]
                r["rand_us"] = r["rand_s"] / RAND_N * 1e6
                r["slow_rps"] = SLOW_N / r["slow_s"]
                res[b].append(r)
                print(
                    f"round {rnd + 1}/{args.rounds} {b}: start {r['startup_ms']:.0f} ms, "
                    f"walk {r['walk_s']:.2f} s, seq {r['seq_mbps']:.0f} MB/s, "
                    f"rand {r['rand_rps']:.0f}/s, slow {r['slow_rps']:.0f}/s",
                    file=sys.stderr,
                    flush=True,
                )
            up.append(os.getloadavg())
    finally:
        if any(
            line.split()[1] == str(mnt) for line in Path("/proc/mounts").read_text().splitlines()
        ):
            libc.umount2(str(mnt).encode(), MNT_DETACH)
        mnt.rmdir()
        for p in (datafile, ctrfile):
            Path(p).unlink(missing_ok=True)
        for b in bindings:  # the servers' stderr: kept only when something was said
            logf = mnt.parent / f"{mnt.name}-{b}.log"
            if logf.exists() and logf.stat().st_size == 0:
                logf.unlink()

    def cell(vals: list[float], fmt: str) -> str:
        med, lo, hi = (fmt.format(v) for v in (statistics.median(vals), min(vals), max(vals)))
        return f"{med} ({lo}-{hi})"

    vers = {b: importlib.metadata.version(b) for b in bindings if "-" not in b}
    print(
        f"FUSE bindings, {args.rounds} rounds, order reversed each round, median (min-max); "
        f"{os.uname().release}, Python {sys.version.split()[0]}, "
        + ", ".join(f"{b} {v}" for b, v in vers.items())
    )
    print("load average (1 min) before/after each round: " + " ".join(f"{a[0]:.2f}" for a in up))
    for k, vals in imp.items():
        print(f"{k}: {cell(vals, '{:.0f}')} ms")
    print()
    print("| measure | " + " | ".join(bindings) + " |")
    print("|---|" + "---|" * len(bindings))
    for key, label, _, fmt in ROWS:
        print(
            f"| {label} | "
            + " | ".join(cell([r[key] for r in res[b]], fmt) for b in bindings)
            + " |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]))
    else:
        main()
