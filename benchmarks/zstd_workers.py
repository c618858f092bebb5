"""Is libzstd's multi-threaded output independent of the worker count? Bytes compared.

    .venv/bin/python benchmarks/zstd_workers.py [TAR ...] [--levels 1,3,9] [--workers 0,1,2,4]

Each input (an uncompressed layer tar; default: the four layers of benchmarks/convert.py's
``multi`` image, generated into a temp dir) is compressed by imgpipe's own encoder
(:class:`imgpipe.processors.zstd.ZstdEncoder`: one frame, checksum, no content size,
input in 1 MiB pieces) at every level and worker count, and also fed in other piece
sizes (64 KiB, 3 MiB + 1, and one ``compress()`` call where the size is known) to see
whether the bytes depend on how the input arrives. Prints, per input and level, the
sha256 of each output and whether the outputs with workers >= 1 are one set of bytes,
and whether that set differs from workers = 0. Every output is decoded again and
compared with the input.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import zstandard

from imgpipe.processors.zstd import ZstdDecoder, ZstdEncoder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class Pieces(io.RawIOBase):
    """``data`` handed out in pieces of at most ``size`` bytes (a short-reading source)."""

    def __init__(self, data: bytes, size: int) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._size if n < 0 else min(n, self._size)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out


def encode(data: bytes, level: int, workers: int, piece: int) -> bytes:
    enc = ZstdEncoder(Pieces(data, piece), level=level, threads=workers)
    with enc:
        return enc.read()


def check(data: bytes, out: bytes) -> None:
    dec = ZstdDecoder(io.BytesIO(out))
    with dec:
        if hashlib.sha256(dec.read()).digest() != hashlib.sha256(data).digest():
            raise SystemExit("round trip failed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tars", nargs="*", type=Path)
    ap.add_argument("--levels", default="1,3,9")
    ap.add_argument("--workers", default="0,1,2,4")
    ap.add_argument("--pieces", default="1048576,65536,3145729")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    pieces = [int(x) for x in args.pieces.split(",")]
    tars = args.tars
    if not tars:
        from convert import make_multi_tars

        tars = make_multi_tars(Path(tempfile.mkdtemp(prefix="zstd-workers-")))
    print(f"zstandard {zstandard.__version__}, libzstd {zstandard.ZSTD_VERSION}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    verdict_same = verdict_differs = True
    for tar in tars:
        data = tar.read_bytes()
        for level in levels:
            digests: dict[tuple[int, int], str] = {}
            times: dict[int, float] = {}
            for w in workers:
                for p in pieces:
                    t0 = time.perf_counter()
                    out = encode(data, level, w, p)
                    if p == pieces[0]:
                        times[w] = time.perf_counter() - t0
                        check(data, out)
                    digests[(w, p)] = hashlib.sha256(out).hexdigest()[:16] + f" {len(out)}"
            mt = {d for (w, _), d in digests.items() if w >= 1}
            st = {d for (w, _), d in digests.items() if w == 0}
            same = len(mt) == 1
            differs = not (mt & st)
            verdict_same &= same
            verdict_differs &= differs
            print(f"\n{tar.name} ({len(data)} B), level {level}: workers>=1 all equal: {same}; "
                  f"differs from workers=0: {differs}")  # fmt: skip
            for (w, p), d in digests.items():
                extra = f"  {times[w]:.2f} s" if p == pieces[0] else ""
                print(f"  workers={w} piece={p}: {d}{extra}")
    print(f"\nall inputs and levels: workers>=1 byte-identical whatever the count: "
          f"{verdict_same}; different from workers=0: {verdict_differs}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
