"""``debian-multi``: a runnable multi-layer Debian 12 image built from this host's packages.

The lazy-pull tests and benchmarks/lazy.py need an image that is big, real and runnable
(``cat /etc/os-release`` must start a dynamic binary: ld.so, libc), with no network:
the files of installed Debian packages (``dpkg -L``) are the layers, grouped as an image
built on debian:bookworm would be. Merged /usr as Debian 12 has it (``bin``, ``lib``,
``lib64``, ``sbin`` are symlinks into ``usr/``); owners 0:0, one fixed mtime, entries
sorted, uncompressed tar layers (a converter compresses them: ``imgpipe convert
--estargz`` or ``ctr-remote images convert``).

::

    image = make_debian_multi(tmp_path / "debian-multi")     # OCI layout, tag "latest"
    registry.push_layout(image.layout, image.tag, "debian-multi", "src")
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from estargz_images import write_tar_layout

MTIME: Final = 1_700_000_000

#: Layer by layer, the packages: libc and the base, the tools, libraries, python. About
#: 100 MB of files in all (installed sizes on Debian 12).
LAYERS: Final = (
    (
        "base-files", "libc6", "libgcc-s1", "libselinux1", "libpcre2-8-0", "libacl1",
        "libattr1", "libgmp10", "libcrypt1", "libtinfo6", "zlib1g", "ncurses-base",
        "debianutils", "dash", "mawk",
    ),
    ("coreutils", "bash", "grep", "sed", "findutils", "tar", "gzip", "util-linux"),
    ("perl-base", "tzdata", "libssl3", "libsqlite3-0", "libstdc++6"),
    ("libpython3.11-minimal", "python3.11-minimal", "libpython3.11-stdlib", "libexpat1"),
)  # fmt: skip

_TOP_LINKS: Final = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
_PASSWD: Final = b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP: Final = b"root:x:0:\nnogroup:x:65534:\n"
TAG: Final = "latest"


@dataclass(frozen=True)
class DebianImage:
    layout: Path
    tag: str
    layer_sizes: tuple[int, ...]  # bytes of each uncompressed tar
    os_release: bytes  # what `cat /etc/os-release` prints


def _package_paths(packages: tuple[str, ...]) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-L", *packages], capture_output=True, text=True, check=True
    ).stdout
    paths: set[str] = set()
    for line in out.splitlines():
        if not line.startswith("/") or line.startswith("/."):
            continue
        # merged /usr: /bin/cat is usr/bin/cat; canonical parents, the name itself kept
        parent, name = os.path.split(line)
        real = os.path.join(os.path.realpath(parent), name)
        if os.path.lexists(real) and not real.startswith(("/proc", "/sys", "/dev")):
            paths.add(real.lstrip("/"))
    return sorted(paths)


def _tar(names: list[str], extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # the parents of every entry first (a layer's tar names its directories)
        dirs = sorted({p for n in names for p in _parents(n)} - set(names))
        for name in sorted({*dirs, *names}):
            path = "/" + name
            info = tar.gettarinfo(path, arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = MTIME
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        for info, data in extra:
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **kw: object):  # type: ignore[no-untyped-def]
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else (0o777 if kind == tarfile.SYMTYPE else 0o644)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, (data if kind == tarfile.REGTYPE else None)


def make_debian_multi(layout: Path, *, tag: str = TAG, groups: int = len(LAYERS)) -> DebianImage:
    """Write the image as an OCI layout at ``layout``: four package layers (the first
    ``groups`` of them: 1 is libc, dash and the base, 17 MB), then a small top layer (a
    file changed, one whited out) -> its description."""
    tars = []
    for n, packages in enumerate(LAYERS[:groups]):
        extra = []
        if n == 0:
            extra = [
                *(_entry(k, kind=tarfile.SYMTYPE, linkname=v) for k, v in _TOP_LINKS.items()),
                *(_entry(d, kind=tarfile.DIRTYPE) for d in ("dev", "proc", "sys", "tmp", "root")),
                _entry("etc/passwd", _PASSWD),
                _entry("etc/group", _GROUP),
                _entry("etc/lazy-deleted", b"the top layer deletes me\n"),
            ]
        tars.append(_tar(_package_paths(packages), extra))
    tars.append(
        _tar(
            [],
            [
                _entry("etc", kind=tarfile.DIRTYPE),
                _entry("etc/motd", b"debian-multi: a lazy-pull test image\n"),
                _entry("etc/.wh.lazy-deleted"),
            ],
        )
    )
    write_tar_layout(
        layout,
        tag,
        tars,
        {"Cmd": ["/bin/bash"], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
    )
    os_release = Path("/usr/lib/os-release").read_bytes()
    assert stat.S_ISLNK(os.lstat("/etc/os-release").st_mode)  # -> ../usr/lib/os-release
    return DebianImage(layout, tag, tuple(len(t) for t in tars), os_release)
