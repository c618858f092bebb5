"""Apply one uncompressed layer tar into a directory, safely, computing its DiffID.

This is containerd's ``archive.Apply`` (``applyNaive``), rebuilt on directory file
descriptors. ``tarfile`` only parses headers (``TarFile.next()`` and ``extractfile()``);
every file operation is ours, relative to a directory fd found by in-root resolution
(:mod:`imgpipe.diff.fsutil`), so nothing a layer names can reach outside the root:

* entry names are cleaned lexically (``..`` clamps at the root, ``/x`` means ``x``), as
  containerd's ``filepath.Clean`` + join does; an entry that resolves to the root itself
  (``.``, ``/``, a symlink named ``.``: umoci's CVE-2021-29136) is skipped with a warning;
* the parent directory is resolved with the root as ``/`` (absolute symlinks re-rooted,
  ``..`` clamped, loops bounded), then the entry is created by name in that fd with
  ``O_EXCL``/``O_NOFOLLOW``, so an existing symlink is replaced, never written through;
* metadata goes to the fd we created (``fchown``, ``fsetxattr``, ``fchmod``, ``futimens``)
  or by name with ``AT_SYMLINK_NOFOLLOW`` (CVE-2021-32760 was a chmod through a symlink);
* a hardlink's target is resolved the same way (containerd's ``hardlinkRootPath``) and
  ``link()`` never follows a final symlink.

Semantics, in containerd's order per entry: resolve and create the parents (0755; in
overlay mode, copying the owner, mode, times and non-``trusted.*`` xattrs of the same
directory in the nearest lower layer), then whiteouts, then replacement (an existing
path is removed unless both it and the entry are directories, which merge), then create,
``lchown`` (unless ``same_owner`` is off), xattrs, ``chmod`` (after chown, which clears
set-id bits; never on symlinks), times. Directory times are set again at the end so
later children do not disturb them.

Whiteouts (OCI image-spec ``layer.md``), per :attr:`ApplyOptions.whiteouts`:

* ``delete``: ``.wh.<name>`` removes ``<name>``; ``.wh..wh..opq`` removes from its
  directory everything this layer did not itself create (inodes this layer made are
  remembered, so the marker's position in the tar does not matter).
* ``overlay``: ``.wh.<name>`` becomes a 0:0 character device, ``.wh..wh..opq`` the xattr
  ``trusted.overlay.opaque=y`` on the directory (containerd's ``OverlayConvertWhiteout``).
* ``overlay-user``: the same with ``user.overlay.opaque`` for ``userxattr`` mounts (what
  umoci's ``UserXattr`` mode writes; containerd itself has no such mode).

A whiteout whose name would leave its directory (``.wh.``, ``.wh..``, ``.wh...``) is an
error, as in containerd's ``validateWhiteout``.

Hardlinks to lower layers (overlay mode): containerd's upperdir fast path calls
``link()`` in the upperdir, which fails when the target lives only in a lower layer (its
mounted slow path gets a kernel copy-up instead). Here, when the target is missing in the
upper directory, it is looked up in :attr:`ApplyOptions.lowers` (nearest first, in-root)
and copied up first, exactly what the overlay mount would do; then the link is made.
The merged view is the same as extracting through the mount.

xattrs (PAX ``SCHILY.xattr.*``): ``user.*`` and ``security.*`` are set (raw bytes:
tarfile hands binary values back as surrogate escapes); ``trusted.*`` (overlay's own
metadata lives there) and ``user.overlay.*`` (the same for userxattr mounts) are refused
with a warning, as is any other namespace. ENOTSUP, and EPERM for ``user.*`` on a
symlink or special file (a kernel rule), become warnings, as in containerd.

Integrity: every byte read from ``stream``, up to EOF and including the end-of-archive
blocks and any padding after them, is hashed into the DiffID. A tar cut short (EOF
inside an entry, inside the padding, or before the end-of-archive zero block) and a
header that does not parse are MalformedDocument, never a silently shorter tree.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, NamedTuple, cast

from imgpipe.diff.fsutil import (
    DirResolver,
    NotADirectoryInRoot,
    clean_components,
    remove_all,
)
from imgpipe.errors import DigestMismatch, MalformedDocument, ResourceLimit
from imgpipe.formats.digest import Digest, Digester

__all__ = [
    "MAX_DEVICE_MAJOR",
    "MAX_DEVICE_MINOR",
    "MAX_ENTRIES",
    "MAX_HEADER_SIZE",
    "MAX_ID",
    "MAX_PATH",
    "MAX_WARNINGS",
    "WHITEOUT_DELETE",
    "WHITEOUT_OVERLAY",
    "WHITEOUT_OVERLAY_USER",
    "ApplyOptions",
    "ApplyResult",
    "apply_layer",
]

WHITEOUT_DELETE: Final = "delete"
WHITEOUT_OVERLAY: Final = "overlay"
WHITEOUT_OVERLAY_USER: Final = "overlay-user"
_WHITEOUT_MODES: Final = (WHITEOUT_DELETE, WHITEOUT_OVERLAY, WHITEOUT_OVERLAY_USER)

#: Entries per layer. Real layers have up to a few hundred thousand; a bound turns a
#: stream of empty headers into an error instead of hours of work.
MAX_ENTRIES: Final = 4_000_000
#: Bytes of one entry's path or link target (Linux PATH_MAX). Longer names cannot be
#: used by path anyway, and tarfile holds them in memory.
MAX_PATH: Final = 4096
#: Bytes of one PAX or GNU long-name header: tarfile reads it into memory whole, so an
#: unbounded one would be a memory bomb. 1 MiB holds thousands of xattrs.
MAX_HEADER_SIZE: Final = 1 << 20
#: uid/gid ceiling: above 2^31-1 ids wrap to 0 in places (containerd CVE-2024-40635).
MAX_ID: Final = 2**31 - 1
#: Linux keeps 12 bits of major and 20 of minor (``new_encode_dev``); larger numbers
#: would be silently truncated into another device, so they are refused. (containerd
#: refuses only above 2^32-1.)
MAX_DEVICE_MAJOR: Final = (1 << 12) - 1
MAX_DEVICE_MINOR: Final = (1 << 20) - 1
#: Warnings kept in the result; the rest are counted in a last line.
MAX_WARNINGS: Final = 100
#: Copy buffer for file data and for draining: flat memory, few syscalls.
_CHUNK: Final = 1 << 20
_BLOCK: Final = 512
_NAME_MAX: Final = 255  # Linux's limit on one path component
_WH_PREFIX: Final = ".wh."
_WH_OPAQUE: Final = ".wh..wh..opq"
_XATTR_PAX: Final = "SCHILY.xattr."
#: Latest time containerd's ``boundTime`` accepts (max int64 nanoseconds).
_MAX_NS: Final = 2**63 - 1
_REGULAR_TYPES: Final = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
#: Headers whose whole body tarfile reads into memory.
_EXTENDED_HEADER_TYPES: Final = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_DIR_NOFOLLOW: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _applied_xattr(name: str) -> bool:
    """xattr namespaces a layer may set (module docstring)."""
    return name.startswith(("user.", "security.")) and not name.startswith("user.overlay.")


def _carried_xattr(name: str) -> bool:
    """xattrs layers carry (what the differ exports): kept in sync on directory merges."""
    return name == "security.capability" or (
        name.startswith("user.") and not name.startswith("user.overlay.")
    )


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class ApplyOptions:
    """How :func:`apply_layer` writes a layer.

    ``whiteouts`` picks the on-disk whiteout format (module docstring). ``lowers`` are
    the parent layers' directories, nearest first; they are only read, in overlay modes,
    to copy up parent directory metadata and hardlink targets. ``same_owner`` applies the
    tar's uid/gid (``lchown``; needs root). ``devices`` creates character and block
    devices (needs CAP_MKNOD); without it they are skipped with a warning. FIFOs are
    always created.
    """

    whiteouts: str = WHITEOUT_DELETE
    lowers: tuple[Path, ...] = ()
    same_owner: bool = field(default_factory=_is_root)
    devices: bool = field(default_factory=_is_root)
    max_entries: int = MAX_ENTRIES
    max_path: int = MAX_PATH
    #: None: use openat2 when the kernel has it. False forces the userspace walk (tests
    #: run both); True is a request, ignored without kernel support.
    use_openat2: bool | None = None

    def __post_init__(self) -> None:
        if self.whiteouts not in _WHITEOUT_MODES:
            raise ValueError(f"whiteouts must be one of {_WHITEOUT_MODES}, not {self.whiteouts!r}")
        object.__setattr__(self, "lowers", tuple(Path(p) for p in self.lowers))


@dataclass(frozen=True)
class ApplyResult:
    """What :func:`apply_layer` did: the DiffID and size of the uncompressed tar stream,
    the number of tar entries processed, and warnings (skipped devices, refused xattrs,
    entries that resolved to the root), at most :data:`MAX_WARNINGS` of them."""

    diff_id: Digest
    size: int
    entries: int
    warnings: tuple[str, ...]


# --- the input stream ------------------------------------------------------------------


class _TarSource:
    """The layer stream as tarfile sees it: buffered, hashed, forward-only.

    Every byte fetched from the raw stream is hashed and counted once. tarfile's ``r:``
    mode reads exactly what it needs (512-byte headers, then data) and seeks only
    forward; a backward seek is allowed within the current and the previous buffer,
    which also lets us look again at the block where tarfile stopped (the
    end-of-archive marker must be a full zero block there). This replaces tarfile's
    stream mode, whose buffer is re-copied on every header read (quadratic in its size).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._digester = Digester("sha256")
        self.fetched = 0  # bytes taken from raw (and hashed)
        self._buf = b""  # the most recent chunk from raw ...
        self._buf_start = 0  # ... and its offset in the stream
        self._prev = b""  # the chunk before it, for short looks back
        self._pos = 0  # tarfile's position

    def _fetch(self) -> bool:
        data = self._raw.read(_CHUNK)
        if not data:
            return False
        data = bytes(data)
        self._digester.update(data)
        self._prev = self._buf
        self._buf_start += len(self._buf)
        self._buf = data
        self.fetched += len(data)
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _CHUNK
        parts: list[bytes] = []
        while size > 0:
            lo = self._pos - self._buf_start
            if lo < 0:  # inside the previous chunk after a short seek back
                piece = self._prev[len(self._prev) + lo :][:size]
            elif lo < len(self._buf):
                piece = self._buf[lo : lo + size]
            elif self._fetch():
                continue
            else:
                break
            parts.append(piece)
            self._pos += len(piece)
            size -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence != os.SEEK_SET:
            raise OSError(errno.ESPIPE, "layer stream: only absolute seeks")
        if offset < self._buf_start - len(self._prev):
            raise OSError(errno.ESPIPE, "layer stream: cannot seek that far back")
        # Forward seeks past the buffer fetch (and hash) the bytes skipped; a seek past
        # EOF leaves the position at EOF, so the next read is short, as with a file.
        while offset > self._buf_start + len(self._buf) and self._fetch():
            pass
        self._pos = min(offset, self._buf_start + len(self._buf))
        return self._pos

    def seekable(self) -> bool:
        return False

    def block_at(self, offset: int) -> bytes:
        """Up to one block at ``offset`` (short at EOF)."""
        self.seek(offset)
        return self.read(_BLOCK)

    def drain(self) -> None:
        while self._fetch():
            pass

    def digest(self) -> Digest:
        return self._digester.digest()


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized PAX / GNU long-name headers before reading them.

    ``_proc_member`` is tarfile's documented extension point for subclasses.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_HEADER_SIZE:
            raise ResourceLimit(
                f"tar extended header of {self.size} bytes at offset {self.offset}: "
                f"more than {MAX_HEADER_SIZE}"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


# --- the applier -----------------------------------------------------------------------


def _pax_ns(member: tarfile.TarInfo, key: str, fallback: float | None) -> int | None:
    """A PAX time record as exact nanoseconds (tarfile's float loses the last digits)."""
    text = member.pax_headers.get(key)
    if text is not None:
        whole, _, frac = text.partition(".")
        try:
            sec = int(whole)
            ns = int((frac + "000000000")[:9]) if frac else 0
        except ValueError:
            raise MalformedDocument(f"{member.name!r}: bad PAX {key} {text!r}") from None
        return sec * 1_000_000_000 + (-ns if whole.startswith("-") else ns)
    if fallback is None:
        return None
    return int(fallback) * 1_000_000_000


def _bound(ns: int) -> int:
    # containerd's boundTime: outside [epoch, max] becomes the epoch.
    return ns if 0 <= ns <= _MAX_NS else 0


class _Meta(NamedTuple):
    """An entry's ownership, permission bits and xattrs, as applied."""

    uid: int
    gid: int
    mode: int
    xattrs: list[tuple[str, bytes]]


@dataclass(slots=True)
class _DirTimes:
    components: list[str]
    ino: int
    dev: int
    atime: int
    mtime: int


class _Applier:
    def __init__(self, root: str | os.PathLike[str], options: ApplyOptions) -> None:
        self.opts = options
        self.root = DirResolver(root, use_openat2=options.use_openat2)
        self.overlay = options.whiteouts != WHITEOUT_DELETE
        self._lowers: list[DirResolver] = []
        try:
            if self.overlay:
                self._lowers = [
                    DirResolver(p, use_openat2=options.use_openat2) for p in options.lowers
                ]
        except BaseException:
            self.close()
            raise
        self.warnings: list[str] = []
        self._dropped_warnings = 0
        # Inodes this layer created or re-listed: an opaque marker keeps these.
        self._made: set[tuple[int, int]] = set()
        self._dirs: list[_DirTimes] = []
        # Parent path -> open fd, for runs of entries in one directory (tars are sorted).
        # Any removal clears it: a cached fd must never stand for a path that now
        # resolves elsewhere (containerd's CVE-2025-47290 was such a stale cache).
        self._cache: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self._clear_cache()
        self.root.close()
        for r in self._lowers:
            r.close()

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self._dropped_warnings += 1

    def all_warnings(self) -> tuple[str, ...]:
        if self._dropped_warnings:
            return (*self.warnings, f"... and {self._dropped_warnings} more warnings")
        return tuple(self.warnings)

    # -- directories --

    def _clear_cache(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def _parent_fd(self, components: Sequence[str]) -> int:
        key = tuple(components)
        fd = self._cache.get(key)
        if fd is None:
            if len(self._cache) >= 64:
                self._clear_cache()
            fd = self.root.open_dir(
                components, create=True, mkdir_hook=self._copy_up_dir if self.overlay else None
            )
            self._cache[key] = fd
        return fd

    def _lower_lstat(
        self, components: Sequence[str]
    ) -> tuple[DirResolver, int, os.stat_result] | None:
        """The nearest lower layer's ``(resolver, parent fd, stat)`` of a path, or None.

        The caller closes the fd. A lower whose parent is missing or not a directory
        does not have the path.
        """
        for lower in self._lowers:
            try:
                pfd = lower.open_dir(components[:-1])
            except (FileNotFoundError, NotADirectoryInRoot):
                continue
            try:
                st = os.stat(components[-1], dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.close(pfd)
                continue
            return lower, pfd, st
        return None

    def _copy_up_dir(self, parent_fd: int, name: str, resolved: Sequence[str]) -> None:
        # containerd's mkparent with Parents: a directory made implicitly in an upper
        # layer takes the metadata of the directory it shadows, so the merged view does
        # not change the directory's owner or mode.
        found = self._lower_lstat(resolved)
        if found is None:
            return
        _, lfd, st = found
        try:
            if not stat.S_ISDIR(st.st_mode):
                return  # replaced in the lower: keep the defaults
            src = os.open(resolved[-1], _DIR_NOFOLLOW, dir_fd=lfd)
            try:
                dst = os.open(name, _DIR_NOFOLLOW, dir_fd=parent_fd)
                try:
                    self._copy_meta_fd(src, dst, st)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        finally:
            os.close(lfd)

    def _copy_meta_fd(self, src: int, dst: int, st: os.stat_result) -> None:
        if self.opts.same_owner:
            os.fchown(dst, st.st_uid, st.st_gid)
        for key in os.listxattr(src):
            if key.startswith("trusted."):
                continue  # overlay's own state (opaque, redirect) must not be copied
            try:
                os.setxattr(dst, key, os.getxattr(src, key))
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.warn(f"copy-up: xattr {key} not copied: {e.strerror}")
        os.fchmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- one entry --

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        if len(os.fsencode(name)) > self.opts.max_path:
            raise ResourceLimit(f"tar entry name of {len(os.fsencode(name))} bytes: too long")
        comps = clean_components(name)
        for comp in comps:
            if len(os.fsencode(comp)) > _NAME_MAX:
                raise MalformedDocument(
                    f"{name!r}: a path component is longer than {_NAME_MAX} bytes"
                )
        if not comps:
            self.warn(f"{name!r}: resolves to the root; skipped")
            return
        parent, base = comps[:-1], comps[-1]
        try:
            pfd = self._parent_fd(parent)
        except FileNotFoundError as e:
            raise MalformedDocument(f"{name!r}: cannot create parent: {e.strerror}") from None
        except NotADirectoryInRoot as e:
            raise MalformedDocument(f"{name!r}: {e}") from None

        if base.startswith(_WH_PREFIX):
            self._whiteout(member, pfd, base)
            return

        kind = member.type
        if kind in _REGULAR_TYPES or member.issparse():
            kind = tarfile.REGTYPE
        elif kind not in (
            tarfile.DIRTYPE,
            tarfile.SYMTYPE,
            tarfile.LNKTYPE,
            tarfile.CHRTYPE,
            tarfile.BLKTYPE,
            tarfile.FIFOTYPE,
        ):
            raise MalformedDocument(f"{name!r}: unsupported tar entry type {kind!r}")
        uid, gid = member.uid, member.gid
        if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
            raise MalformedDocument(f"{name!r}: uid/gid {uid}/{gid} outside 0..{MAX_ID}")
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            if not (
                0 <= member.devmajor <= MAX_DEVICE_MAJOR
                and 0 <= member.devminor <= MAX_DEVICE_MINOR
            ):
                raise MalformedDocument(
                    f"{name!r}: device {member.devmajor}:{member.devminor} out of range"
                )
            if not self.opts.devices:
                self.warn(f"{name!r}: device node skipped (devices disabled, needs CAP_MKNOD)")
                return
        if (
            kind in (tarfile.SYMTYPE, tarfile.LNKTYPE)
            and len(os.fsencode(member.linkname)) > self.opts.max_path
        ):
            raise ResourceLimit(f"{name!r}: link target too long")

        # Replacement: anything but dir-over-dir is removed first, so the create below
        # (O_EXCL, mkdir, symlink, link, mknod) never goes through what was there.
        try:
            old = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not (stat.S_ISDIR(old.st_mode) and kind == tarfile.DIRTYPE):
            if kind == tarfile.LNKTYPE and self._links_to_itself(member, old):
                return
            remove_all(pfd, base)
            self._clear_cache()
            pfd = self._parent_fd(parent)
            old = None

        mode = member.mode & 0o7777
        mtime = _bound(_pax_ns(member, "mtime", member.mtime) or 0)
        atime_raw = _pax_ns(member, "atime", None)
        atime = max(_bound(atime_raw), mtime) if atime_raw is not None else mtime
        meta = _Meta(uid, gid, mode, self._xattrs(member))

        if kind == tarfile.REGTYPE:
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=pfd,
            )
            try:
                self._copy_data(tar, member, fd)
                self._meta_fd(fd, member, meta)
                os.utime(fd, ns=(atime, mtime))
                st = os.fstat(fd)
            finally:
                os.close(fd)
        elif kind == tarfile.DIRTYPE:
            if old is None:
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = os.open(base, _DIR_NOFOLLOW, dir_fd=pfd)
            try:
                self._meta_fd(fd, member, meta, merge=old is not None)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self._dirs.append(_DirTimes(comps, st.st_ino, st.st_dev, atime, mtime))
        else:
            if kind == tarfile.SYMTYPE:
                os.symlink(member.linkname, base, dir_fd=pfd)
            elif kind == tarfile.LNKTYPE:
                self._hardlink(member, pfd, base)
            else:
                fmt = {
                    tarfile.CHRTYPE: stat.S_IFCHR,
                    tarfile.BLKTYPE: stat.S_IFBLK,
                    tarfile.FIFOTYPE: stat.S_IFIFO,
                }[kind]
                dev = os.makedev(member.devmajor, member.devminor) if fmt != stat.S_IFIFO else 0
                os.mknod(base, fmt | 0o600, dev, dir_fd=pfd)
            self._meta_name(pfd, base, member, meta, symlink=kind == tarfile.SYMTYPE)
            os.utime(base, ns=(atime, mtime), dir_fd=pfd, follow_symlinks=False)
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        self._made.add((st.st_dev, st.st_ino))

    def _links_to_itself(self, member: tarfile.TarInfo, old: os.stat_result) -> bool:
        # A hardlink entry naming the existing file it would replace: removing first
        # would lose the target, so it only refreshes metadata (containerd errors here).
        target = clean_components(member.linkname)
        if not target:
            return False
        try:
            tfd = self.root.open_dir(target[:-1])
        except (FileNotFoundError, NotADirectoryInRoot):
            return False
        try:
            tst = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(tfd)
        return (tst.st_dev, tst.st_ino) == (old.st_dev, old.st_ino)

    def _copy_data(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        src = tar.extractfile(member)
        if src is None:  # pragma: no cover - regular members always have a reader
            raise MalformedDocument(f"{member.name!r}: no data")
        remaining = member.size
        try:
            while remaining > 0:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise MalformedDocument(f"{member.name!r}: tar ends inside the file data")
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                remaining -= len(chunk)
        except tarfile.ReadError as e:
            raise MalformedDocument(
                f"{member.name!r}: tar ends inside the file data ({e})"
            ) from None

    def _xattrs(self, member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX):
                continue
            name = key[len(_XATTR_PAX) :]
            if not _applied_xattr(name):
                self.warn(f"{member.name!r}: xattr {name} refused")
                continue
            # tarfile decodes non-UTF-8 values with surrogate escapes: undo that.
            out.append((name, value.encode("utf-8", "surrogateescape")))
        return out

    def _set_xattr(
        self, target: int | str, member: tarfile.TarInfo, name: str, value: bytes
    ) -> None:
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EPERM):
                self.warn(f"{member.name!r}: xattr {name} not set: {e.strerror}")
                return
            raise

    def _meta_fd(
        self,
        fd: int,
        member: tarfile.TarInfo,
        meta: _Meta,
        *,
        merge: bool = False,
    ) -> None:
        uid, gid, mode, xattrs = meta
        if self.opts.same_owner:
            os.fchown(fd, uid, gid)
        if merge:
            # A directory entry over an existing directory describes its metadata in
            # full: xattrs of the namespaces layers carry that the entry lacks go (the
            # differ exports the same set; containerd leaves them, so apply(diff(a, b))
            # would keep a's). Overlay's trusted.* state is not touched.
            wanted = {k for k, _ in xattrs}
            for key in os.listxattr(fd):
                if key not in wanted and _carried_xattr(key):
                    os.removexattr(fd, key)
        for key, value in xattrs:
            self._set_xattr(fd, member, key, value)
        # After chown (which clears set-id bits) and after security.capability.
        os.fchmod(fd, mode)

    def _meta_name(
        self,
        pfd: int,
        base: str,
        member: tarfile.TarInfo,
        meta: _Meta,
        *,
        symlink: bool,
    ) -> None:
        uid, gid, mode, xattrs = meta
        if self.opts.same_owner:
            os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if xattrs:
            # l*xattr has no *at form; the parent is named through its fd's /proc link
            # and the last component is not followed.
            path = f"/proc/self/fd/{pfd}/{base}"
            for key, value in xattrs:
                self._set_xattr(path, member, key, value)
        if not symlink:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                return  # a hardlink to a symlink: nothing to chmod
            os.chmod(base, mode, dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, member: tarfile.TarInfo, pfd: int, base: str) -> None:
        target = clean_components(member.linkname)
        if not target:
            raise MalformedDocument(f"{member.name!r}: hardlink to the root directory")
        try:
            tfd = self.root.open_dir(target[:-1])
        except FileNotFoundError:
            tfd = -1
        except NotADirectoryInRoot as e:
            raise MalformedDocument(f"{member.name!r}: hardlink target: {e}") from None
        try:
            if tfd >= 0:
                try:
                    os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                    return
                except FileNotFoundError:
                    pass
                except PermissionError:
                    raise MalformedDocument(
                        f"{member.name!r}: hardlink target {member.linkname!r} is a directory"
                    ) from None
            if not self._copy_up_for_link(target):
                raise MalformedDocument(
                    f"{member.name!r}: hardlink target {member.linkname!r} does not exist"
                )
        finally:
            if tfd >= 0:
                os.close(tfd)
        tfd = self.root.open_dir(target[:-1])
        try:
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _copy_up_for_link(self, target: list[str]) -> bool:
        """Copy a hardlink target from the nearest lower layer into the root (overlay)."""
        if not self.overlay:
            return False
        found = self._lower_lstat(target)
        if found is None:
            return False
        _, lfd, st = found
        try:
            if not stat.S_ISREG(st.st_mode):
                return False
            # An fd of our own: the shared cache may be cleared while the caller holds one.
            dfd = self.root.open_dir(target[:-1], create=True, mkdir_hook=self._copy_up_dir)
            src = os.open(target[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lfd)
            try:
                dst = os.open(
                    target[-1],
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
                try:
                    while chunk := os.read(src, _CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(dst, view) :]
                    self._copy_meta_fd(src, dst, st)
                    cst = os.fstat(dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
                os.close(dfd)
            self._made.add((cst.st_dev, cst.st_ino))
            return True
        finally:
            os.close(lfd)

    def _whiteout(self, member: tarfile.TarInfo, pfd: int, base: str) -> None:
        if base == _WH_OPAQUE:
            if self.opts.whiteouts == WHITEOUT_DELETE:
                self._opaque_delete(pfd)
            else:
                key = (
                    "user.overlay.opaque"
                    if self.opts.whiteouts == WHITEOUT_OVERLAY_USER
                    else "trusted.overlay.opaque"
                )
                os.setxattr(pfd, key, b"y")
            return
        victim = base[len(_WH_PREFIX) :]
        if victim in ("", ".", "..") or "/" in victim:
            raise MalformedDocument(f"{member.name!r}: invalid whiteout name")
        if self.opts.whiteouts == WHITEOUT_DELETE:
            if remove_all(pfd, victim):
                self._clear_cache()
            return
        if remove_all(pfd, victim):
            self._clear_cache()
        os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        if self.opts.same_owner:
            uid, gid = member.uid, member.gid
            if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
                raise MalformedDocument(f"{member.name!r}: uid/gid {uid}/{gid} out of range")
            os.chown(victim, uid, gid, dir_fd=pfd, follow_symlinks=False)

    def _opaque_delete(self, dir_fd: int) -> None:
        # Remove, recursively, whatever this layer did not create, so lower layers'
        # content disappears whether the marker comes before or after this layer's
        # children. A directory this layer did not create survives only if something it
        # holds was created by this layer (containerd removes it with that content when
        # the layer lists the child but not the directory: a quirk not copied).
        # Post-order walk on an explicit stack: frames are [fd, entries, keep, name].
        removed = False
        stack: list[list[Any]] = [[os.dup(dir_fd), None, True, ""]]
        try:
            while stack:
                frame = stack[-1]
                fd = frame[0]
                if frame[1] is None:
                    with os.scandir(fd) as it:
                        frame[1] = iter(list(it))
                descended = False
                for entry in frame[1]:
                    st = entry.stat(follow_symlinks=False)
                    made = (st.st_dev, st.st_ino) in self._made
                    if stat.S_ISDIR(st.st_mode):
                        sub = os.open(entry.name, _DIR_NOFOLLOW, dir_fd=fd)
                        stack.append([sub, None, made, entry.name])
                        descended = True
                        break
                    if made:
                        frame[2] = True
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                        removed = True
                if descended:
                    continue
                stack.pop()
                os.close(fd)
                if stack:
                    if frame[2]:
                        stack[-1][2] = True
                    else:
                        os.rmdir(frame[3], dir_fd=stack[-1][0])
                        removed = True
        finally:
            for frame in stack:
                os.close(frame[0])
        if removed:
            self._clear_cache()

    def finish_dirs(self) -> None:
        # Children changed the directories' mtimes; restore the tar's, last to first.
        for d in reversed(self._dirs):
            try:
                pfd = self.root.open_dir(d.components[:-1])
            except (FileNotFoundError, NotADirectoryInRoot):
                continue  # removed later in this layer
            try:
                st = os.stat(d.components[-1], dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (d.dev, d.ino):
                    os.utime(
                        d.components[-1], ns=(d.atime, d.mtime), dir_fd=pfd, follow_symlinks=False
                    )
            except FileNotFoundError:
                pass
            finally:
                os.close(pfd)


def _check_end(reader: _TarSource, tar: tarfile.TarFile) -> None:
    """After tarfile's last member: the end-of-archive marker must be there.

    tarfile returns None alike for a zero block, a clean EOF, a short block and a header
    that does not parse; only the zero block is a real end. (Go's reader also accepts
    a single zero block; POSIX writers put two.)
    """
    offset = tar.offset
    block = reader.block_at(offset)
    if len(block) < _BLOCK:
        raise MalformedDocument(
            f"tar ends at offset {offset + len(block)} without the end-of-archive blocks "
            "(truncated layer)"
        )
    if block.count(0) != _BLOCK:
        raise MalformedDocument(f"tar: invalid header at offset {offset}")


def apply_layer(
    root: str | os.PathLike[str],
    stream: BinaryIO,
    *,
    options: ApplyOptions = ApplyOptions(),
    expected_diff_id: Digest | None = None,
) -> ApplyResult:
    """Apply the uncompressed layer tar ``stream`` into the existing directory ``root``.

    The caller runs any decompressor and decryptor and hands over the tar bytes. Every
    byte read, up to EOF, is hashed: the result's ``diff_id`` is the layer's DiffID and
    ``size`` its uncompressed size. With ``expected_diff_id``, a different digest raises
    DigestMismatch *after* the tree was written: the caller must discard ``root`` (the
    snapshot is never committed). Nothing outside ``root`` is created, changed or
    removed, whatever the tar holds.

    Raises MalformedDocument for a tar that is truncated, does not parse or is hostile
    (invalid whiteout names, hardlinks to missing targets or directories, uid/gid or
    device numbers out of range, a path through a non-directory, symlink loops);
    ResourceLimit when :attr:`ApplyOptions.max_entries`, ``max_path`` or
    :data:`MAX_HEADER_SIZE` are exceeded; OSError for filesystem failures (disk full,
    permission denied). On error, ``root`` holds a partial tree.
    """
    opts = options
    reader = _TarSource(stream)
    applier = _Applier(root, opts)
    entries = 0
    try:
        try:
            tar = tarfile.open(  # noqa: SIM115 - in a try for its error; closed by `with` below
                fileobj=cast(IO[bytes], reader),
                mode="r:",
                tarinfo=_BoundedTarInfo,
                encoding="utf-8",
                errors="surrogateescape",
            )
        except tarfile.ReadError as e:
            raise MalformedDocument(f"layer is not a tar archive: {e}") from None
        with tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as e:
                    raise MalformedDocument(f"tar: {e}") from None
                if member is None:
                    break
                # TarFile keeps every TarInfo for getmembers(); we never need them,
                # and a million entries would otherwise stay in memory.
                cast(Any, tar).members.clear()
                entries += 1
                if entries > opts.max_entries:
                    raise ResourceLimit(f"layer has more than {opts.max_entries} entries")
                applier.entry(tar, member)
            _check_end(reader, tar)
        reader.drain()
        applier.finish_dirs()
    finally:
        applier.close()
    digest = reader.digest()
    if expected_diff_id is not None and digest != expected_diff_id:
        raise DigestMismatch(
            f"layer DiffID {digest} differs from the expected {expected_diff_id}",
            expected=str(expected_diff_id),
            actual=str(digest),
        )
    return ApplyResult(digest, reader.fetched, entries, applier.all_warnings())
