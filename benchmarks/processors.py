"""Stream processor throughput: imgpipe's gzip, zstd and ocicrypt vs gzip, pigz and zstd.

    .venv/bin/python benchmarks/processors.py [--runs 5] [--dir DIR] [--size-mb 200]
                                              [--append benchmarks/RESULTS.md]

One ~200 MB tar of semi-compressible, text-like data (words from a random vocabulary,
with a little random binary), compressed once by ``gzip -6 -n`` and ``zstd -3`` as the
decode inputs. Every case reads its input from a file in DIR and throws its output
away; the figure is MB/s of *uncompressed* bytes (1 MB = 10**6 bytes), the median of
the runs, cases alternating within each run. imgpipe runs in-process (what the library
does inside a pull); the peers are subprocesses writing to /dev/null (their start-up is
a millisecond or two, under 1% here).
"""

from __future__ import annotations

import argparse
import array
import io
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20


def make_tar(path: Path, size: int) -> None:
    rng = random.Random(42)
    alphabet = "abcdefghijklmnopqrstuvwxyz_/.0123456789"
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 12))) for _ in range(4096)]

    def text(n_words: int) -> bytes:
        idx = array.array("H", rng.randbytes(2 * n_words))
        return (" ".join(words[i & 4095] for i in idx) + "\n").encode()

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        done, i = 0, 0
        while done < size:
            data = text(1_000_000) + rng.randbytes(100_000)
            info = tarfile.TarInfo(f"usr/share/doc/f{i:04d}.txt")
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
            done += len(data)
            i += 1


def drain(stream) -> int:  # type: ignore[no-untyped-def]
    n = 0
    while chunk := stream.read(CHUNK):
        n += len(chunk)
    stream.close()
    return n


def run_peer(argv: list[str], src: Path) -> None:
    with src.open("rb") as f, open(os.devnull, "wb") as null:
        subprocess.run(argv, stdin=f, stdout=null, check=True)


def cases(d: Path, with_crypt: bool) -> dict[str, Callable[[], object]]:
    from imgpipe.processors.gzip import GzipDecoder, GzipEncoder
    from imgpipe.processors.zstd import ZstdDecoder, ZstdEncoder

    tar, gz, zst = d / "big.tar", d / "big.tar.gz", d / "big.tar.zst"

    def raw(p: Path):  # type: ignore[no-untyped-def]
        return p.open("rb", buffering=0)

    out: dict[str, Callable[[], object]] = {
        "gzip decode: imgpipe (isal)": lambda: drain(GzipDecoder(raw(gz), backend="isal")),
        "gzip decode: imgpipe (zlib-ng)": lambda: drain(GzipDecoder(raw(gz), backend="zlib-ng")),
        "gzip decode: imgpipe (zlib)": lambda: drain(GzipDecoder(raw(gz), backend="zlib")),
        "gzip decode: gzip -dc": lambda: run_peer(["gzip", "-dc"], gz),
        "gzip decode: pigz -dc": lambda: run_peer(["pigz", "-dc"], gz),
        "gzip encode L6: imgpipe (zlib-ng)": lambda: drain(GzipEncoder(raw(tar), level=6)),
        "gzip encode L6: gzip -6 -n": lambda: run_peer(["gzip", "-6", "-n", "-c"], tar),
        "gzip encode L6: pigz -6 (2 threads)": lambda: run_peer(["pigz", "-6", "-n", "-c"], tar),
        "zstd decode: imgpipe": lambda: drain(ZstdDecoder(raw(zst))),
        "zstd decode: zstd -dc": lambda: run_peer(["zstd", "-q", "-dc"], zst),
        "zstd encode L3: imgpipe (threads=0)": lambda: drain(ZstdEncoder(raw(tar), level=3)),
        "zstd encode L3: imgpipe (threads=-1)": lambda: drain(
            ZstdEncoder(raw(tar), level=3, threads=-1)
        ),
        "zstd encode L3: zstd -3 -T0": lambda: run_peer(["zstd", "-q", "-3", "-T0", "-c"], tar),
    }
    if with_crypt:
        out.update(crypt_cases(d, tar))
    return out


def crypt_cases(d: Path, tar: Path) -> dict[str, Callable[[], object]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from imgpipe.processors.ocicrypt import (
        DecryptingReader,
        EncryptingReader,
        load_private_key,
        load_recipient,
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    recipient = load_recipient(f"jwe:{d / 'pub.pem'}")
    private = load_private_key(str(d / "key.pem"))
    enc = EncryptingReader(tar.open("rb", buffering=0), recipients=[recipient])
    with (d / "big.tar.enc").open("wb") as f:
        while chunk := enc.read(CHUNK):
            f.write(chunk)
    annotations = enc.annotations()
    enc.close()
    from imgpipe.formats.digest import Digest

    known = Digest.from_bytes(b"")  # stands for the blob's digest, known to the caller

    def encrypt(digest: Digest | None) -> int:
        r = EncryptingReader(tar.open("rb", buffering=0), recipients=[recipient], digest=digest)
        n = drain_keep_open(r)
        r.annotations()  # the JWE wrapping is part of the job
        r.close()
        return n

    return {
        "ocicrypt encrypt: imgpipe (digest given)": lambda: encrypt(known),
        "ocicrypt encrypt: imgpipe (plaintext hashed, as in a chain)": lambda: encrypt(None),
        "ocicrypt decrypt: imgpipe": lambda: drain(
            DecryptingReader(
                (d / "big.tar.enc").open("rb", buffering=0),
                annotations=annotations,
                keys=[private],
            )
        ),
    }


def drain_keep_open(stream) -> int:  # type: ignore[no-untyped-def]
    n = 0
    while chunk := stream.read(CHUNK):
        n += len(chunk)
    return n


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where the inputs live")
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--no-crypt", action="store_true", help="skip ocicrypt")
    ap.add_argument("--append", type=Path, help="append the table to this Markdown file")
    args = ap.parse_args()

    import isal
    import zlib_ng
    import zstandard

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="imgpipe-bench-") as tmp:
        d = Path(tmp)
        make_tar(d / "big.tar", args.size_mb * 1_000_000)
        size = (d / "big.tar").stat().st_size
        run_peer(["gzip", "-6", "-n", "-c"], d / "big.tar")  # warm the cache
        with (d / "big.tar.gz").open("wb") as f, (d / "big.tar").open("rb") as src:
            subprocess.run(["gzip", "-6", "-n", "-c"], stdin=src, stdout=f, check=True)
        with (d / "big.tar.zst").open("wb") as f, (d / "big.tar").open("rb") as src:
            subprocess.run(["zstd", "-q", "-3", "-c"], stdin=src, stdout=f, check=True)
        gz_size = (d / "big.tar.gz").stat().st_size
        zst_size = (d / "big.tar.zst").stat().st_size
        table = cases(d, not args.no_crypt)
        times: dict[str, list[float]] = {name: [] for name in table}
        for run in range(args.runs):
            names = list(table) if run % 2 == 0 else list(reversed(table))
            for name in names:
                t0 = time.perf_counter()
                table[name]()
                times[name].append(time.perf_counter() - t0)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    mbps = {name: size / statistics.median(ts) / 1e6 for name, ts in times.items()}
    lines = [
        "",
        "## Stream processors — `benchmarks/processors.py`",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine()}. A {size / 1e6:.0f} MB text-like tar "
        f"(gzip -6: {gz_size / 1e6:.0f} MB, zstd -3: {zst_size / 1e6:.0f} MB); MB/s of "
        f"uncompressed bytes, median of {args.runs} runs, cases alternating. imgpipe "
        "in-process, reading the file in 1 MiB chunks; peers as subprocesses to /dev/null. "
        f"Libraries: python-isal {isal.__version__}, zlib-ng {zlib_ng.__version__}, "
        f"zstandard {zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION}).",
        "",
        "| case | MB/s (median) | min s | max s |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {mbps[name]:.0f} | {min(ts):.2f} | {max(ts):.2f} |")

    def ratio(a: str, b: str) -> str:
        return f"{mbps[a] / mbps[b]:.2f}"

    lines += [
        "",
        "Ratios (imgpipe / peer, MB/s):",
        "",
        f"- gzip decode, isal vs `pigz -dc`: **{ratio('gzip decode: imgpipe (isal)', 'gzip decode: pigz -dc')}**"  # noqa: E501
        f" (zlib-ng: {ratio('gzip decode: imgpipe (zlib-ng)', 'gzip decode: pigz -dc')};"
        f" vs `gzip -dc`: {ratio('gzip decode: imgpipe (isal)', 'gzip decode: gzip -dc')})",
        f"- zstd decode vs `zstd -dc`: **{ratio('zstd decode: imgpipe', 'zstd decode: zstd -dc')}**",  # noqa: E501
        f"- gzip encode L6 vs `gzip -6`: {ratio('gzip encode L6: imgpipe (zlib-ng)', 'gzip encode L6: gzip -6 -n')}"  # noqa: E501
        f"; vs `pigz -6`: {ratio('gzip encode L6: imgpipe (zlib-ng)', 'gzip encode L6: pigz -6 (2 threads)')}",  # noqa: E501
        f"- zstd encode L3 vs `zstd -3 -T0`: single-threaded {ratio('zstd encode L3: imgpipe (threads=0)', 'zstd encode L3: zstd -3 -T0')}"  # noqa: E501
        f", threads=-1 {ratio('zstd encode L3: imgpipe (threads=-1)', 'zstd encode L3: zstd -3 -T0')}",  # noqa: E501
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with args.append.open("a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
