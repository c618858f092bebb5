"""What each verb imports before it works: ``python -X importtime`` totals per verb.

    .venv-bench/bin/python benchmarks/importtime.py [--runs 5] [--dir DIR] [--top 5] [--no-registry]
                                                    [--only run,images]

Each verb is the installed ``imgpipe`` entry point run as a whole process, once plain
(wall time) and once under ``python -X importtime`` (the import tree), alternating verb
by verb, ``--runs`` times. A busybox fixture image is built, pulled into a root and
unpacked there first; with Debian's ``docker-registry`` (default) it is also pushed to
one on 127.0.0.1 for the registry verbs. What a verb writes (a pulled root, a
conversion) is removed before its next run, untimed, so every run does the same work.

Byte code is cached (``PYTHONPYCACHEPREFIX`` in the work directory after a warm-up, as
an installed package has its ``.pyc``). The table gives per verb: the median wall time
(min-max), the median import total (the sum of every module's own import time, min-max),
the number of modules in that tree and the number loaded (``sys.modules`` when the verb
ends: ``-X importtime`` does not see a module imported through ``importlib.import_module``,
as the packages' lazy-export tables do, so the tree misses those and their own time; the
loaded count is the robust figure), how much of the total is the interpreter's own start-up
(``site`` and what it loads, e.g. setuptools' editable finder, which a wheel install does
not pay), and the heaviest packages by own time in the median run. ``-X importtime``
inflates every import a little: compare the totals with one another, not with the wall.
The load average is printed with the table (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # fixtures/; the installed imgpipe comes first
sys.path.insert(0, str(HERE))
IMGPIPE = Path(sys.executable).parent / "imgpipe"
#: packages whose own modules are counted as the interpreter's start-up
STARTUP_ROOTS = ("site",)


@dataclass
class Verb:
    name: str
    argv: list[str]
    #: run before each measured run, untimed (clean what the last run wrote)
    reset: Callable[[], None] | None = None
    walls: list[float] = field(default_factory=list)
    imports: list[ImportTree] = field(default_factory=list)


@dataclass
class ImportTree:
    #: (module, own µs, cumulative µs, depth) in the order -X importtime prints them
    rows: list[tuple[str, int, int, int]]
    #: len(sys.modules) when the process ended
    loaded: int = 0

    @property
    def total(self) -> float:
        return sum(own for _, own, _, _ in self.rows) / 1000

    @property
    def startup(self) -> float:
        """ms of imports done by the interpreter's start-up (``site`` and below)."""
        return (
            sum(cum for mod, _, cum, depth in self.rows if depth == 0 and mod in STARTUP_ROOTS)
            / 1000
        )

    def packages(self) -> dict[str, float]:
        """ms of own import time per package (imgpipe's by subpackage)."""
        acc: dict[str, float] = defaultdict(float)
        for mod, own, _, _ in self.rows:
            parts = mod.split(".")
            key = ".".join(parts[:2]) if parts[0] == "imgpipe" and len(parts) > 1 else parts[0]
            acc[key.lstrip("_")] += own / 1000
        return dict(acc)


#: The line the process prints last: how many modules it had loaded.
_LOADED = "imgpipe-bench loaded modules:"
#: Runs a script (the ``imgpipe`` entry point, or ``-c CODE``) as ``python`` would (argv,
#: sys.path[0], ``__main__``), then prints ``_LOADED``; atexit, built in, is all it adds.
_COUNTING = (
    "import atexit, os, sys\n"
    f"atexit.register(lambda: print({_LOADED!r}, len(sys.modules), file=sys.stderr))\n"
    "sys.argv = sys.argv[1:]\n"
    "if sys.argv[0] == '-c':\n"
    "    code = sys.argv.pop(1)\n"
    "else:\n"
    "    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))\n"
    "    code = open(sys.argv[0]).read()\n"
    "exec(compile(code, sys.argv[0], 'exec'), {'__name__': '__main__'})\n"
)


def parse_importtime(stderr: str) -> ImportTree:
    rows = []
    loaded = 0
    for line in stderr.splitlines():
        if line.startswith(_LOADED):
            loaded = int(line.split(":")[1])
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        head, cum, name = line.split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), int(head.split(":")[1]), int(cum), depth))
    return ImportTree(rows, loaded)


def _env(work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env.update(extra or {})
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def verbs(work: Path, env: dict[str, str], registry: str | None) -> list[Verb]:
    from fixtures.build import build_image

    root = work / "root"
    layout = build_image("busybox", work / "fixtures")
    src = f"oci:{layout}:busybox"
    ip = [str(IMGPIPE), "--root", str(root)]
    _run([*ip, "-q", "pull", src], env)
    can_run = os.geteuid() == 0 and shutil.which("runc") is not None
    _run([*ip, "-q", "unpack", "busybox", *([] if can_run else ["--snapshotter", "native"])], env)
    fresh = work / "fresh"

    def clean_fresh() -> None:
        shutil.rmtree(fresh, ignore_errors=True)

    def drop_converted() -> None:
        subprocess.run(
            [*ip, "-q", "rmi", "busybox-zstd"], env=env, capture_output=True, check=False
        )

    out = [
        Verb("python -c pass (the floor)", [sys.executable, "-c", "pass"]),
        Verb("--version", [str(IMGPIPE), "--version"]),
        Verb("--help", [str(IMGPIPE), "--help"]),
        Verb("images", [*ip, "images"]),
        Verb("inspect (stored)", [*ip, "inspect", "busybox"]),
        Verb("ps -a", [*ip, "ps", "-a"]),
        Verb("content ls", [*ip, "content", "ls"]),
        Verb("pull oci: (empty root)", [str(IMGPIPE), "--root", str(fresh), "-q", "pull", src],
             clean_fresh),
        Verb("unpack (already unpacked)", [*ip, "-q", "unpack", "busybox"]),
        Verb("pull --unpack oci: (empty root)",
             [str(IMGPIPE), "--root", str(fresh), "-q", "pull", "--unpack", src], clean_fresh),
        Verb("convert --zstd (stored)", [*ip, "-q", "convert", "--zstd", "local:busybox",
                                         "local:busybox-zstd"], drop_converted),
    ]  # fmt: skip
    if can_run:
        out.append(Verb("run --rm busybox /bin/true", [*ip, "run", "--rm", "busybox", "/bin/true"]))
    if registry is not None:
        ref = f"{registry}/bench/busybox:v1"
        out += [
            Verb("inspect docker:// (remote)", [*ip, "inspect", f"docker://{ref}"]),
            Verb("pull registry (empty root)",
                 [str(IMGPIPE), "--root", str(fresh), "-q", "pull", ref], clean_fresh),
        ]  # fmt: skip
    return out


def measure(vs: list[Verb], env: dict[str, str], runs: int) -> None:
    for v in vs:  # warm-up: byte code, page cache
        if v.reset:
            v.reset()
        _run(v.argv, env)
    for i in range(runs):
        for v in vs if i % 2 == 0 else list(reversed(vs)):
            if v.reset:
                v.reset()
            t = time.perf_counter()
            _run(v.argv, env)
            v.walls.append((time.perf_counter() - t) * 1000)
            if v.reset:
                v.reset()
            argv = [sys.executable, "-X", "importtime", "-c", _COUNTING, *v.argv[1:]]
            if v.argv[0] == str(IMGPIPE):
                argv = [sys.executable, "-X", "importtime", "-c", _COUNTING, str(IMGPIPE),
                        *v.argv[1:]]  # fmt: skip
            v.imports.append(parse_importtime(_run(argv, env).stderr))


def table(vs: list[Verb], top: int) -> str:
    lines = [
        "| verb | wall ms median (min-max) | imports ms median (min-max) | modules (tree) "
        "| loaded | of it start-up ms | heaviest (own ms, median run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in vs:
        totals = [t.total for t in v.imports]
        med = sorted(v.imports, key=lambda t: t.total)[len(v.imports) // 2]
        heavy = sorted(med.packages().items(), key=lambda kv: -kv[1])[:top]
        lines.append(
            f"| {v.name} | {statistics.median(v.walls):.1f} ({min(v.walls):.1f}-"
            f"{max(v.walls):.1f}) | {statistics.median(totals):.1f} ({min(totals):.1f}-"
            f"{max(totals):.1f}) | {len(med.rows)} | {med.loaded} | {med.startup:.1f} | "
            + ", ".join(f"{k} {ms:.1f}" for k, ms in heavy)
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: /tmp)")
    ap.add_argument("--top", type=int, default=5, help="packages named per verb")
    ap.add_argument("--no-registry", action="store_true", help="skip the registry verbs")
    ap.add_argument("--only", default="", help="comma-separated substrings: verbs to keep")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgpipe-importtime-", dir=args.dir))
    registry = None
    try:
        env = _env(work)
        host = None
        if not args.no_registry and shutil.which("docker-registry") and shutil.which("skopeo"):
            import pull as pull_bench

            registry, host = pull_bench.start_registry(work)
            from fixtures.build import build_image

            layout = build_image("busybox", work / "push-src")
            penv, _ = pull_bench.push_with_skopeo(
                work, layout, "busybox", f"{host}/bench/busybox:v1"
            )
            env = _env(work, {k: penv[k] for k in ("HOME", "TMPDIR", "XDG_RUNTIME_DIR")})
        vs = verbs(work, env, host)
        if args.only:
            keep = args.only.split(",")
            vs = [v for v in vs if any(k in v.name for k in keep)]
        measure(vs, env, args.runs)
        load = os.getloadavg()
        print(
            f"{args.runs} runs per verb, alternating; {os.cpu_count()} cores; load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; Python {sys.version.split()[0]}; "
            f"work dir {work}"
        )
        print(table(vs, args.top))
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
