"""Apply one uncompressed layer tar into a directory, safely, computing its DiffID.

This is containerd's ``archive.Apply`` (``applyNaive``), rebuilt on directory file
descriptors. ``tarfile`` only parses headers (:mod:`imgpipe.diff.tarstream`); every file
operation is ours, relative to a directory fd found by in-root resolution
(:mod:`imgpipe.fs.inroot`), so nothing a layer names can reach outside the root:

* entry names are cleaned lexically (``..`` clamps at the root, ``/x`` means ``x``), as
  containerd's ``filepath.Clean`` + join does; an entry that resolves to the root itself
  (``.``, ``/``, a symlink named ``.``: umoci's CVE-2021-29136) is skipped with a warning;
* the parent directory is resolved with the root as ``/`` (absolute symlinks re-rooted,
  ``..`` clamped, loops bounded), then the entry is created by name in that fd with
  ``O_EXCL``/``O_NOFOLLOW``, so an existing symlink is replaced, never written through;
* metadata goes to the fd we created or by name with ``AT_SYMLINK_NOFOLLOW``
  (:mod:`imgpipe.diff.metadata`);
* a hardlink's target is resolved the same way (:mod:`imgpipe.diff.writers`).

Semantics, in containerd's order per entry: resolve and create the parents
(:mod:`imgpipe.diff.state`), then whiteouts (:mod:`imgpipe.diff.whiteouts`), then
replacement (an existing path is removed unless both it and the entry are directories,
which merge), then create, ``lchown`` (unless ``same_owner`` is off), xattrs, ``chmod``,
times. Directory times are set again at the end so later children do not disturb them.

Integrity: every byte read from ``stream``, up to EOF, is hashed into the DiffID; a tar
cut short or a header that does not parse is MalformedDocument, never a silently shorter
tree (:mod:`imgpipe.diff.tarstream`).
"""

from __future__ import annotations

import os
import stat
import tarfile
from typing import BinaryIO, Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import DigestMismatch, MalformedDocument, ResourceLimit
from imgpipe.fs import NotADirectoryInRoot, clean_components, remove_all

from .metadata import Meta, entry_times, layer_xattrs
from .options import MAX_DEVICE_MAJOR, MAX_DEVICE_MINOR, MAX_ID, ApplyOptions, ApplyResult
from .state import ApplyState
from .tarstream import TarSource, tar_entries
from .whiteouts import WH_PREFIX, apply_whiteout
from .writers import links_to_itself, write_entry

__all__ = ["apply_layer"]

_NAME_MAX: Final = 255  # Linux's limit on one path component
_REGULAR_TYPES: Final = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_OTHER_TYPES: Final = frozenset(
    {tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE}
)
_DEFAULT_OPTIONS: Final = ApplyOptions()


def _entry(state: ApplyState, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Check one tar entry against the bounds, then apply it."""
    opts = state.opts
    name = member.name
    # Encoded only when it might be too long: n characters are at most 4n bytes.
    if len(name) * 4 > opts.max_path and len(os.fsencode(name)) > opts.max_path:
        raise ResourceLimit(f"tar entry name of {len(os.fsencode(name))} bytes: too long")
    comps = clean_components(name)
    for comp in comps:
        if len(comp) * 4 > _NAME_MAX and len(os.fsencode(comp)) > _NAME_MAX:
            raise MalformedDocument(f"{name!r}: a path component is longer than {_NAME_MAX} bytes")
    if not comps:
        state.warn(f"{name!r}: resolves to the root; skipped")
        return
    parent, base = comps[:-1], comps[-1]
    try:
        pfd = state.parent_fd(parent)
    except FileNotFoundError as e:
        raise MalformedDocument(f"{name!r}: cannot create parent: {e.strerror}") from None
    except NotADirectoryInRoot as e:
        raise MalformedDocument(f"{name!r}: {e}") from None

    if base.startswith(WH_PREFIX):
        apply_whiteout(state, member, pfd, base)
        return

    kind = member.type
    if kind in _REGULAR_TYPES or member.issparse():
        kind = tarfile.REGTYPE
    elif kind != tarfile.DIRTYPE and kind not in _OTHER_TYPES:
        raise MalformedDocument(f"{name!r}: unsupported tar entry type {kind!r}")
    uid, gid = member.uid, member.gid
    if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
        raise MalformedDocument(f"{name!r}: uid/gid {uid}/{gid} outside 0..{MAX_ID}")
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        if not (
            0 <= member.devmajor <= MAX_DEVICE_MAJOR and 0 <= member.devminor <= MAX_DEVICE_MINOR
        ):
            raise MalformedDocument(
                f"{name!r}: device {member.devmajor}:{member.devminor} out of range"
            )
        if not opts.devices:
            state.warn(f"{name!r}: device node skipped (devices disabled, needs CAP_MKNOD)")
            return
    if (
        kind in (tarfile.SYMTYPE, tarfile.LNKTYPE)
        and len(member.linkname) * 4 > opts.max_path
        and len(os.fsencode(member.linkname)) > opts.max_path
    ):
        raise ResourceLimit(f"{name!r}: link target too long")

    times = entry_times(member)
    meta = Meta(uid, gid, member.mode & 0o7777, layer_xattrs(member, state.warn))
    # Created first, looked at only if that fails: in a fresh layer nothing is there,
    # and every creating call (O_EXCL open, mkdir, symlink, link, mknod) fails with
    # EEXIST before it changes anything, whatever the name is (a symlink included).
    try:
        st = write_entry(state, tar, member, pfd, comps, kind=kind, meta=meta, times=times)
    except FileExistsError:
        st = _replace(state, tar, member, parent, base, kind=kind, meta=meta, times=times)
    if st is not None:
        state.made.add((st.st_dev, st.st_ino))


def _replace(
    state: ApplyState,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parent: list[str],
    base: str,
    *,
    kind: bytes,
    meta: Meta,
    times: tuple[int, int],
) -> os.stat_result | None:
    """The entry over an existing path: anything but dir-over-dir is removed first, so
    the create (O_EXCL, mkdir, symlink, link, mknod) never goes through what was there;
    a directory over a directory merges."""
    pfd = state.parent_fd(parent)
    old = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    merge = stat.S_ISDIR(old.st_mode) and kind == tarfile.DIRTYPE
    if not merge:
        if kind == tarfile.LNKTYPE and links_to_itself(state, member, old):
            return None
        remove_all(pfd, base)
        state.clear_cache()
        pfd = state.parent_fd(parent)
    comps = [*parent, base]
    return write_entry(
        state, tar, member, pfd, comps, kind=kind, meta=meta, times=times, exists=merge
    )


def _finish_dirs(state: ApplyState) -> None:
    # Children changed the directories' mtimes; restore the tar's, last to first.
    for d in reversed(state.dirs):
        found = state.root.lstat(d.components)
        if found is None:
            continue  # removed later in this layer
        pfd, st = found
        try:
            if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (d.dev, d.ino):
                os.utime(d.components[-1], ns=(d.atime, d.mtime), dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        finally:
            os.close(pfd)


def apply_layer(
    root: str | os.PathLike[str],
    stream: BinaryIO,
    *,
    options: ApplyOptions = _DEFAULT_OPTIONS,
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
    :data:`~imgpipe.diff.options.MAX_HEADER_SIZE` are exceeded; OSError for filesystem
    failures (disk full, permission denied). On error, ``root`` holds a partial tree.
    """
    reader = TarSource(stream)
    state = ApplyState(root, options)
    entries = 0
    try:
        # a layer without end-of-archive blocks is accepted only when its DiffID is checked
        eof_ends = expected_diff_id is not None
        for tar, member in tar_entries(reader, options.max_entries, eof_ends=eof_ends):
            entries += 1
            _entry(state, tar, member)
        reader.drain()
        _finish_dirs(state)
    finally:
        reader.close()
        state.close()
    digest = reader.digest()
    if expected_diff_id is not None and digest != expected_diff_id:
        raise DigestMismatch(
            f"layer DiffID {digest} differs from the expected {expected_diff_id}",
            expected=str(expected_diff_id),
            actual=str(digest),
        )
    return ApplyResult(digest, reader.fetched, entries, state.all_warnings())
