"""Transports: OCI layout directories, oci-archive and docker-archive files.

Images are built here by hand (a config, one or two tar layers, a manifest) so every
test knows the exact bytes and digests it expects. skopeo reads what our sink writes, and
writes an archive our source reads, so we are not only testing ourselves against
ourselves.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    InvalidArgument,
    MalformedDocument,
    NotFound,
    ResourceLimit,
    SizeMismatch,
    Unsupported,
)
from imgpipe.formats.layout import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from imgpipe.formats.manifest import Index, Manifest, parse_index, parse_manifest
from imgpipe.formats.mediatype import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER,
)
from imgpipe.formats.reference import parse_transport
from imgpipe.transports import (
    DockerArchiveSource,
    OCIArchiveSink,
    OCIArchiveSource,
    OCILayoutSink,
    OCILayoutSource,
    open_sink,
    open_source,
)
from imgpipe.transports.ocilayout import TEMP_PREFIX

# --- building images by hand -----------------------------------------------------------


def layer_tar(files: dict[str, bytes]) -> bytes:
    """A small uncompressed layer tar with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> Digest:
    return Digest.from_bytes(data)


@dataclass(frozen=True)
class Image:
    """A single-platform image: its manifest and every blob it reaches."""

    manifest: Manifest
    blobs: dict[Digest, bytes]

    @property
    def root(self) -> Descriptor:
        return self.manifest.descriptor()

    def all_blobs(self) -> dict[Digest, bytes]:
        return {self.manifest.digest: self.manifest.raw, **self.blobs}


def make_image(seed: str, *, layers: int = 2) -> Image:
    """A valid little OCI image whose bytes depend on ``seed`` (uncompressed layers)."""
    layer_blobs = [
        layer_tar({f"{seed}/file{i}": f"{seed} layer {i}\n".encode()}) for i in range(layers)
    ]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [str(sha(b)) for b in layer_blobs]},
        },
        sort_keys=True,
    ).encode()
    config_desc = Descriptor(OCI_CONFIG, sha(config), len(config))
    layer_descs = [Descriptor(OCI_LAYER, sha(b), len(b)) for b in layer_blobs]
    manifest = Manifest.build(config_desc, layer_descs)
    blobs = {sha(config): config, **{sha(b): b for b in layer_blobs}}
    return Image(manifest, blobs)


def write_layout_by_hand(root: Path, entries: list[tuple[Image, str]]) -> Index:
    """An OCI layout written with plain file writes, independent of the sink under test."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    descs = []
    for image, tag in entries:
        for dg, data in image.all_blobs().items():
            (root / "blobs" / dg.algorithm / dg.encoded).write_bytes(data)
        ann = {ANNOTATION_REF_NAME: tag} if tag else {}
        descs.append(Descriptor(image.root.media_type, image.root.digest, image.root.size,
                                annotations=ann))  # fmt: skip
    index = Index.build(descs)
    (root / "index.json").write_bytes(index.raw)
    return index


def copy_image(sink: Any, image: Image) -> None:
    """Write every blob then the root, the order the protocol asks for."""
    for dg, data in image.blobs.items():
        desc = Descriptor(OCI_LAYER, dg, len(data))
        sink.write_blob(desc, io.BytesIO(data))
    sink.write_blob(image.root, io.BytesIO(image.manifest.raw))
    sink.write_root(image.root)


def read_image(source: Any) -> tuple[Descriptor, dict[Digest, bytes]]:
    """Resolve and read every blob of a single-manifest image, checking each digest."""
    root = source.resolve()
    out: dict[Digest, bytes] = {}

    def get(desc: Descriptor) -> bytes:
        with source.open_blob(desc) as f:
            data: bytes = f.read()
        assert sha(data) == desc.digest, f"blob {desc.digest} came back different"
        assert len(data) == desc.size
        out[desc.digest] = data
        return data

    manifest = parse_manifest(get(root), root.media_type)
    for child in manifest.children():
        get(child)
    return root, out


def index_entries(layout: Path) -> list[dict[str, Any]]:
    doc = json.loads((layout / "index.json").read_bytes())
    entries: list[dict[str, Any]] = doc["manifests"]
    return entries


def blob_files(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


class ExplodingStream(io.RawIOBase):
    """A stream that fails the test if anything reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        raise AssertionError("the sink read a stream for a blob it already had")


@pytest.fixture
def two_images() -> tuple[Image, Image]:
    return make_image("alpha"), make_image("beta", layers=1)


# --- OCI layout source -----------------------------------------------------------------


def test_layout_resolve_by_tag(tmp_path: Path, two_images: tuple[Image, Image]) -> None:
    a, b = two_images
    write_layout_by_hand(tmp_path, [(a, "a"), (b, "b")])
    with OCILayoutSource(str(tmp_path), tag="b") as src:
        root = src.resolve()
    assert root.digest == b.manifest.digest
    assert root.annotations[ANNOTATION_REF_NAME] == "b"


def test_layout_resolve_only_entry_without_tag(
    tmp_path: Path, two_images: tuple[Image, Image]
) -> None:
    a, _ = two_images
    write_layout_by_hand(tmp_path, [(a, "")])
    with OCILayoutSource(str(tmp_path)) as src:
        root, blobs = read_image(src)
    assert root.digest == a.manifest.digest
    assert blobs == a.all_blobs()


def test_layout_missing_tag_names_the_tags_present(
    tmp_path: Path, two_images: tuple[Image, Image]
) -> None:
    a, b = two_images
    write_layout_by_hand(tmp_path, [(a, "first"), (b, "second")])
    with OCILayoutSource(str(tmp_path), tag="third") as src, pytest.raises(NotFound) as ei:
        src.resolve()
    assert "'third'" in str(ei.value)
    assert "first" in str(ei.value)
    assert "second" in str(ei.value)


def test_layout_several_images_need_a_tag(tmp_path: Path, two_images: tuple[Image, Image]) -> None:
    a, b = two_images
    write_layout_by_hand(tmp_path, [(a, "first"), (b, "")])
    with OCILayoutSource(str(tmp_path)) as src, pytest.raises(InvalidArgument) as ei:
        src.resolve()
    assert "first" in str(ei.value)
    assert str(b.manifest.digest) in str(ei.value)


def test_layout_open_blob_streams(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    image = make_image("s")
    write_layout_by_hand(tmp_path, [(image, "t")])
    dg = sha(big)
    (tmp_path / "blobs" / "sha256" / dg.encoded).write_bytes(big)
    with OCILayoutSource(str(tmp_path), tag="t") as src:
        f = src.open_blob(Descriptor(OCI_LAYER, dg, len(big)))
    # The stream outlives the source and hands out the file piece by piece.
    with f:
        assert not isinstance(f, io.BytesIO)
        head = f.read(10)
        rest = f.read()
    assert head + rest == big


def test_layout_open_blob_missing_is_not_found(tmp_path: Path) -> None:
    write_layout_by_hand(tmp_path, [(make_image("x"), "t")])
    absent = sha(b"absent")
    with OCILayoutSource(str(tmp_path)) as src, pytest.raises(NotFound, match=absent.encoded):
        src.open_blob(Descriptor(OCI_LAYER, absent, 6))


def _symlink_blob(root: Path, dg: Digest, outside: Path) -> None:
    path = root / "blobs" / "sha256" / dg.encoded
    (outside / dg.encoded).write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside / dg.encoded)


def _symlink_alg_dir(root: Path, dg: Digest, outside: Path) -> None:
    shutil.move(root / "blobs" / "sha256", outside / "sha256")
    (root / "blobs" / "sha256").symlink_to(outside / "sha256")


def _symlink_blobs_dir(root: Path, dg: Digest, outside: Path) -> None:
    shutil.move(root / "blobs", outside / "blobs")
    (root / "blobs").symlink_to(outside / "blobs")


@pytest.mark.parametrize(
    "plant", [_symlink_blob, _symlink_alg_dir, _symlink_blobs_dir], ids=lambda f: f.__name__
)
def test_layout_symlinks_inside_are_refused(
    tmp_path: Path, plant: Callable[[Path, Digest, Path], None]
) -> None:
    root, outside = tmp_path / "layout", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    image = make_image("l")
    write_layout_by_hand(root, [(image, "t")])
    config = image.manifest.config
    with OCILayoutSource(str(root), tag="t") as src:
        plant(root, config.digest, outside)
        with pytest.raises(MalformedDocument, match="symlink"):
            src.open_blob(config)


def test_layout_fifo_blob_is_refused_without_blocking(tmp_path: Path) -> None:
    image = make_image("f")
    write_layout_by_hand(tmp_path, [(image, "t")])
    config = image.manifest.config
    path = tmp_path / "blobs" / "sha256" / config.digest.encoded
    path.unlink()
    os.mkfifo(path)
    with OCILayoutSource(str(tmp_path)) as src, pytest.raises(MalformedDocument, match="regular"):
        src.open_blob(config)


# Each case: how DIR starts ("missing", "file", "empty" or a "valid" layout), files then
# written over (None deletes), the error class and words its message must contain.
BAD_LAYOUTS: list[tuple[str, str, dict[str, bytes | None], type[Exception], str]] = [
    ("missing dir", "missing", {}, NotFound, "no such directory"),
    ("a file", "file", {}, MalformedDocument, "not a directory"),
    ("empty dir", "empty", {}, MalformedDocument, "oci-layout"),
    ("no index.json", "valid", {"index.json": None}, MalformedDocument, "index.json"),
    ("version 2", "valid", {"oci-layout": b'{"imageLayoutVersion":"2.0.0"}'}, Unsupported,
     r"2\.0\.0"),
    ("oci-layout not json", "valid", {"oci-layout": b"{"}, MalformedDocument, "oci-layout"),
    ("index not json", "valid", {"index.json": b"[1,"}, MalformedDocument, "index.json"),
    ("index is a manifest", "valid", {"index.json": make_image("m").manifest.raw},
     MalformedDocument, "index.json"),
    ("index too large", "valid", {"index.json": b" " * (4 * 1024 * 1024 + 1)}, ResourceLimit,
     "index.json"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("start", "edits", "error", "words"),
    [case[1:] for case in BAD_LAYOUTS],
    ids=[case[0] for case in BAD_LAYOUTS],
)
def test_layout_source_bad_input(
    tmp_path: Path,
    start: str,
    edits: dict[str, bytes | None],
    error: type[Exception],
    words: str,
) -> None:
    root = tmp_path / "layout"
    if start == "file":
        root.write_bytes(b"x")
    elif start != "missing":
        root.mkdir()
    if start == "valid":
        write_layout_by_hand(root, [(make_image("v"), "t")])
    for name, data in edits.items():
        if data is None:
            (root / name).unlink()
        else:
            (root / name).write_bytes(data)
    with pytest.raises(error, match=words) as ei:
        OCILayoutSource(str(root))
    assert "\n" not in str(ei.value)


# --- OCI layout sink -------------------------------------------------------------------


def test_sink_round_trip_into_new_dir(tmp_path: Path) -> None:
    image = make_image("rt")
    target = tmp_path / "new" / "layout"
    with OCILayoutSink(str(target), tag="v1", image_name="example.com/rt:v1") as sink:
        copy_image(sink, image)
    assert json.loads((target / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = index_entries(target)
    assert entry["digest"] == str(image.manifest.digest)
    assert entry["annotations"] == {
        ANNOTATION_REF_NAME: "v1",
        ANNOTATION_IMAGE_NAME: "example.com/rt:v1",
    }
    with OCILayoutSource(str(target), tag="v1") as src:
        root, blobs = read_image(src)
    assert root.digest == image.manifest.digest
    assert blobs == image.all_blobs()
    assert not [p for p in target.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_sink_adds_to_existing_layout(tmp_path: Path, two_images: tuple[Image, Image]) -> None:
    a, b = two_images
    write_layout_by_hand(tmp_path, [(a, "a")])
    with OCILayoutSink(str(tmp_path), tag="b") as sink:
        copy_image(sink, b)
    assert [e["annotations"][ANNOTATION_REF_NAME] for e in index_entries(tmp_path)] == ["a", "b"]
    for tag, image in (("a", a), ("b", b)):
        with OCILayoutSource(str(tmp_path), tag=tag) as src:
            _, blobs = read_image(src)
        assert blobs == image.all_blobs()


def test_sink_same_tag_is_replaced(tmp_path: Path) -> None:
    a, b, c = make_image("a"), make_image("b"), make_image("c")
    write_layout_by_hand(tmp_path, [(a, "keep"), (b, "moving")])
    with OCILayoutSink(str(tmp_path), tag="moving") as sink:
        copy_image(sink, c)
    entries = index_entries(tmp_path)
    assert [(e["annotations"][ANNOTATION_REF_NAME], e["digest"]) for e in entries] == [
        ("keep", str(a.manifest.digest)),
        ("moving", str(c.manifest.digest)),
    ]


def test_sink_untagged_twice_is_listed_once(tmp_path: Path) -> None:
    image = make_image("u")
    for _ in range(2):
        with OCILayoutSink(str(tmp_path)) as sink:
            copy_image(sink, image)
    entries = index_entries(tmp_path)
    assert [e["digest"] for e in entries] == [str(image.manifest.digest)]
    assert "annotations" not in entries[0]


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda b: bytes([b[0] ^ 1]) + b[1:], DigestMismatch),
        (lambda b: b[:-1], SizeMismatch),
        (lambda b: b + b"!", SizeMismatch),
    ],
    ids=["flipped bit", "short", "long"],
)
def test_sink_corrupt_stream_keeps_nothing(
    tmp_path: Path, mangle: Callable[[bytes], bytes], error: type[Exception]
) -> None:
    good, bad = make_image("good"), make_image("bad")
    write_layout_by_hand(tmp_path, [(good, "good")])
    index_before = (tmp_path / "index.json").read_bytes()
    files_before = blob_files(tmp_path)
    config = bad.manifest.config
    with pytest.raises(error), OCILayoutSink(str(tmp_path), tag="bad") as sink:
        sink.write_blob(config, io.BytesIO(mangle(bad.blobs[config.digest])))
        sink.write_root(bad.root)
    assert blob_files(tmp_path) == files_before
    assert (tmp_path / "index.json").read_bytes() == index_before


def test_sink_exception_in_block_adds_no_entry(tmp_path: Path) -> None:
    good, other = make_image("good"), make_image("other")
    write_layout_by_hand(tmp_path, [(good, "good")])
    index_before = (tmp_path / "index.json").read_bytes()
    with pytest.raises(KeyboardInterrupt), OCILayoutSink(str(tmp_path), tag="x") as sink:
        copy_image(sink, other)
        raise KeyboardInterrupt
    assert (tmp_path / "index.json").read_bytes() == index_before
    # The verified blobs stay, unreferenced: allowed by the layout spec.
    assert other.manifest.config.digest.encoded in blob_files(tmp_path)


def test_sink_exception_removes_a_dir_it_created(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    with pytest.raises(RuntimeError), OCILayoutSink(str(target), tag="x") as sink:
        copy_image(sink, make_image("f"))
        raise RuntimeError("copy failed")
    assert not target.exists()


def test_sink_existing_blob_is_not_read_again(tmp_path: Path) -> None:
    image = make_image("e")
    write_layout_by_hand(tmp_path, [(image, "e")])
    config = image.manifest.config
    with OCILayoutSink(str(tmp_path), tag="e2") as sink:
        assert sink.has_blob(config)
        sink.write_blob(config, ExplodingStream())  # type: ignore[arg-type]
        assert not sink.has_blob(Descriptor(OCI_LAYER, sha(b"nope"), 4))


def test_sink_refuses_a_dir_that_is_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(MalformedDocument, match="not an OCI image layout"):
        OCILayoutSink(str(tmp_path), tag="t")
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


def test_sink_refuses_unknown_layout_version(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_bytes(b'{"imageLayoutVersion":"9.9.9"}')
    with pytest.raises(Unsupported, match=r"9\.9\.9"):
        OCILayoutSink(str(tmp_path), tag="t")


# --- oci-archive -----------------------------------------------------------------------


def test_oci_archive_round_trip(tmp_path: Path, two_images: tuple[Image, Image]) -> None:
    a, _ = two_images
    archive = tmp_path / "img.tar"
    with OCIArchiveSink(str(archive), tag="v1") as sink:
        copy_image(sink, a)
    with OCIArchiveSource(str(archive), tag="v1") as src:
        root, blobs = read_image(src)
    assert root.digest == a.manifest.digest
    assert blobs == a.all_blobs()
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {"oci-layout", "index.json"} <= set(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    # No temporary layout or tar left next to the archive.
    assert os.listdir(tmp_path) == ["img.tar"]


def test_oci_archive_is_reproducible(tmp_path: Path) -> None:
    image = make_image("repro")
    outputs = []
    for name in ("one.tar", "two.tar"):
        with OCIArchiveSink(str(tmp_path / name), tag="t") as sink:
            copy_image(sink, image)
        outputs.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert outputs[0] == outputs[1]


def test_oci_archive_sink_failure_keeps_old_file(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(b"old archive")
    with pytest.raises(RuntimeError), OCIArchiveSink(str(archive), tag="t") as sink:
        copy_image(sink, make_image("x"))
        raise RuntimeError("interrupted")
    assert archive.read_bytes() == b"old archive"
    assert os.listdir(tmp_path) == ["img.tar"]


def _tar_of(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _layout_members(image: Image, tag: str = "t") -> list[tarfile.TarInfo | tuple[str, bytes]]:
    index = Index.build([Descriptor(image.root.media_type, image.root.digest, image.root.size,
                                    annotations={ANNOTATION_REF_NAME: tag})])  # fmt: skip
    out: list[tarfile.TarInfo | tuple[str, bytes]] = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("index.json", index.raw),
    ]
    out.extend((f"blobs/sha256/{d.encoded}", b) for d, b in image.all_blobs().items())
    return out


HOSTILE_MEMBERS: list[tuple[str, tarfile.TarInfo | tuple[str, bytes], str]] = [
    ("dotdot", ("../evil", b"x"), "outside"),
    ("dotdot inside", ("blobs/../../evil", b"x"), "outside"),
    ("absolute", ("/etc/evil", b"x"), "absolute"),
    ("symlink", _link("blobs/sha256/" + "0" * 64, "/etc/passwd", tarfile.SYMTYPE), "absolute"),
    ("relative symlink", _link("evil", "oci-layout", tarfile.SYMTYPE), "link"),
    ("hardlink", _link("evil", "index.json", tarfile.LNKTYPE), "link"),
    ("duplicate", ("index.json", b"{}"), "twice"),
]


@pytest.mark.parametrize(
    ("member", "words"), [c[1:] for c in HOSTILE_MEMBERS], ids=[c[0] for c in HOSTILE_MEMBERS]
)
def test_oci_archive_hostile_member_refused(
    tmp_path: Path, member: tarfile.TarInfo | tuple[str, bytes], words: str
) -> None:
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(_tar_of([*_layout_members(make_image("h")), member]))
    with pytest.raises(MalformedDocument, match=words) as ei:
        OCIArchiveSource(str(archive))
    assert "\n" not in str(ei.value)


def test_oci_archive_reads_dot_slash_names_and_ignores_extras(tmp_path: Path) -> None:
    image = make_image("dots")
    members = [("./" + n, b) for n, b in _layout_members(image)]  # type: ignore[misc]
    members.append(("./manifest.json", b"[]"))
    archive = tmp_path / "dots.tar"
    archive.write_bytes(_tar_of(members))  # type: ignore[arg-type]
    with OCIArchiveSource(str(archive), tag="t") as src:
        _, blobs = read_image(src)
    assert blobs == image.all_blobs()


@pytest.mark.parametrize(
    ("content", "error", "words"),
    [
        (None, NotFound, "no such file"),
        (b"definitely not a tar", MalformedDocument, "tar"),
        (gzip.compress(b"x" * 1024), MalformedDocument, "tar"),
        ("no-index", MalformedDocument, "index.json"),
    ],
    ids=["missing", "garbage", "gzip", "no index.json"],
)
def test_oci_archive_bad_files(
    tmp_path: Path, content: bytes | str | None, error: type[Exception], words: str
) -> None:
    archive = tmp_path / "a.tar"
    if content == "no-index":
        members = [m for m in _layout_members(make_image("n"))
                   if not (isinstance(m, tuple) and m[0] == "index.json")]  # fmt: skip
        archive.write_bytes(_tar_of(members))
    elif isinstance(content, bytes):
        archive.write_bytes(content)
    with pytest.raises(error, match=words):
        OCIArchiveSource(str(archive))


# --- docker-archive --------------------------------------------------------------------


@dataclass(frozen=True)
class SavedImage:
    config: bytes
    layers: list[bytes]
    tags: list[str]


def docker_save_tar(
    images: list[SavedImage], *, oci_names: bool = False, share_via_symlink: bool = False
) -> bytes:
    """A tar as ``docker save`` writes it: legacy ``<id>/layer.tar`` or ``blobs/sha256``."""
    members: list[tarfile.TarInfo | tuple[str, bytes]] = []
    entries = []
    written: dict[str, str] = {}  # layer sha -> member name
    for image in images:
        cfg_name = (f"blobs/sha256/{sha(image.config).encoded}" if oci_names
                    else f"{sha(image.config).encoded}.json")  # fmt: skip
        members.append((cfg_name, image.config))
        layer_names = []
        for i, layer in enumerate(image.layers):
            h = sha(layer).encoded
            if oci_names:
                name = f"blobs/sha256/{h}"
                if name not in written.values():
                    members.append((name, layer))
            else:
                name = f"{hashlib.sha256(image.config + bytes([i])).hexdigest()}/layer.tar"
                if share_via_symlink and h in written:
                    members.append(_link(name, f"../{written[h]}", tarfile.SYMTYPE))
                else:
                    members.append((name, layer))
            written.setdefault(h, name)
            layer_names.append(name)
        entries.append({"Config": cfg_name, "RepoTags": image.tags, "Layers": layer_names})
    members.append(("manifest.json", json.dumps(entries).encode()))
    return _tar_of(members)


def saved_config(arch: str, layers: list[bytes]) -> bytes:
    """A valid image config whose diff_ids match ``layers`` (gzip ones decompressed)."""
    diff_ids = [str(sha(gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b)) for b in layers]
    return json.dumps(
        {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()


@pytest.fixture
def saved() -> list[SavedImage]:
    plain = layer_tar({"etc/hostname": b"box\n"})
    zipped = gzip.compress(layer_tar({"bin/tool": b"#!/bin/sh\n"}), mtime=0)
    other = layer_tar({"etc/os-release": b"ID=other\n"})
    return [
        SavedImage(saved_config("amd64", [plain, zipped]), [plain, zipped],
                   ["busybox:latest", "example.com:5000/team/box:1.0"]),
        SavedImage(saved_config("arm64", [other]), [other], ["docker.io/library/alpine:3"]),
    ]  # fmt: skip


def test_docker_archive_synthesises_schema2(tmp_path: Path, saved: list[SavedImage]) -> None:
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar(saved[:1]))
    with DockerArchiveSource(str(archive)) as src:
        root = src.resolve()
        assert root.media_type == DOCKER_MANIFEST
        with src.open_blob(root) as f:
            raw = f.read()
        assert sha(raw) == root.digest
        manifest = parse_manifest(raw, root.media_type)
        assert manifest.config.media_type == DOCKER_CONFIG
        assert manifest.config.digest == sha(saved[0].config)
        assert [(d.media_type, d.digest, d.size) for d in manifest.layers] == [
            (DOCKER_LAYER, sha(saved[0].layers[0]), len(saved[0].layers[0])),
            (DOCKER_LAYER_GZIP, sha(saved[0].layers[1]), len(saved[0].layers[1])),
        ]
        _, blobs = read_image(src)
    assert blobs[sha(saved[0].layers[1])] == saved[0].layers[1]


@pytest.mark.parametrize(
    ("ref", "index"),
    [
        ("busybox", 0),
        ("docker.io/library/busybox:latest", 0),
        ("example.com:5000/team/box:1.0", 0),
        ("alpine:3", 1),
    ],
)
def test_docker_archive_selects_by_repo_tag(
    tmp_path: Path, saved: list[SavedImage], ref: str, index: int
) -> None:
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar(saved))
    with DockerArchiveSource(str(archive), ref=ref) as src:
        root = src.resolve()
        with src.open_blob(root) as f:
            manifest = parse_manifest(f.read())
    assert manifest.config.digest == sha(saved[index].config)


def test_docker_archive_selection_errors(tmp_path: Path, saved: list[SavedImage]) -> None:
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar(saved))
    with DockerArchiveSource(str(archive), ref="nginx:1") as src:
        with pytest.raises(NotFound) as ei:
            src.resolve()
        assert "alpine:3" in str(ei.value)
        assert "busybox:latest" in str(ei.value)
    with DockerArchiveSource(str(archive)) as src, pytest.raises(InvalidArgument, match="several"):
        src.resolve()


def test_docker_archive_oci_style_names(tmp_path: Path, saved: list[SavedImage]) -> None:
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar(saved[:1], oci_names=True))
    with DockerArchiveSource(str(archive)) as src:
        _, blobs = read_image(src)
    assert set(blobs) >= {sha(x) for x in saved[0].layers}


def test_docker_archive_member_named_by_wrong_digest(
    tmp_path: Path, saved: list[SavedImage]
) -> None:
    tar = docker_save_tar(saved[:1], oci_names=True)
    layer = saved[0].layers[0]
    lying = bytearray(layer)
    lying[-1] ^= 1  # same size, same member name, other bytes
    tar = tar.replace(layer, bytes(lying))
    archive = tmp_path / "saved.tar"
    archive.write_bytes(tar)
    with DockerArchiveSource(str(archive)) as src, pytest.raises(DigestMismatch):
        src.resolve()


def test_docker_archive_follows_shared_layer_symlink(tmp_path: Path) -> None:
    shared = layer_tar({"shared": b"s"})
    images = [
        SavedImage(saved_config("amd64", [shared]), [shared], ["one:1"]),
        SavedImage(saved_config("arm64", [shared]), [shared], ["two:2"]),
    ]
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar(images, share_via_symlink=True))
    with DockerArchiveSource(str(archive), ref="two:2") as src:
        _, blobs = read_image(src)
    assert blobs[sha(shared)] == shared


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([("layer.tar", b"x")], "manifest.json"),
        ([("manifest.json", b"{")], "not JSON"),
        ([("manifest.json", b'{"Config": "a"}')], "list"),
        ([("manifest.json", b'[{"Config": "c.json", "Layers": ["gone/layer.tar"]}]'),
          ("c.json", b"{}")], "gone/layer.tar"),
        ([("manifest.json", b'[{"Config": "c.json", "Layers": ["l.tar"]}]'), ("c.json", b"{}"),
          _link("l.tar", "../../etc/passwd", tarfile.SYMTYPE)], "outside"),
    ],
    ids=["no manifest.json", "bad json", "not a list", "missing layer", "escaping symlink"],
)  # fmt: skip
def test_docker_archive_bad_input(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], words: str
) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar_of(members))
    with pytest.raises(MalformedDocument, match=words):
        DockerArchiveSource(str(archive)).resolve()


# --- dispatch --------------------------------------------------------------------------


def test_open_source_and_sink_dispatch(tmp_path: Path) -> None:
    image = make_image("d")
    layout = tmp_path / "layout"
    with open_sink(parse_transport(f"oci:{layout}:v2"), image_name="x.io/d:v2") as sink:
        assert isinstance(sink, OCILayoutSink)
        copy_image(sink, image)
    with open_source(parse_transport(f"oci:{layout}:v2")) as src:
        assert isinstance(src, OCILayoutSource)
        assert src.resolve().digest == image.manifest.digest
    archive = tmp_path / "a.tar"
    with open_sink(parse_transport(f"oci-archive:{archive}:v2")) as sink:
        assert isinstance(sink, OCIArchiveSink)
        copy_image(sink, image)
    with open_source(parse_transport(f"oci-archive:{archive}")) as src:
        assert isinstance(src, OCIArchiveSource)
        assert src.resolve().digest == image.manifest.digest


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: open_sink(parse_transport("docker-archive:/tmp/x.tar")), "docker-archive"),
    ],
    ids=["docker-archive sink"],
)
def test_unsupported_transports(call: Callable[[], object], words: str) -> None:
    with pytest.raises(Unsupported, match=words):
        call()


# --- interop with skopeo ---------------------------------------------------------------


@pytest.fixture
def skopeo(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run skopeo with a private accept-everything policy; /etc is never consulted."""
    exe = shutil.which("skopeo")
    assert exe, "skopeo is required for the interop tests (apt-get install skopeo; make apt)"
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([exe, "--policy", str(policy), *args],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr}"
        return proc

    return run


def test_skopeo_inspects_our_layout(
    tmp_path: Path, skopeo: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    image = make_image("sk")
    layout = tmp_path / "ours"
    with OCILayoutSink(str(layout), tag="v1") as sink:
        copy_image(sink, image)
    out = json.loads(skopeo("inspect", f"oci:{layout}:v1").stdout)
    assert out["Digest"] == str(image.manifest.digest)
    assert out["Architecture"] == "amd64"
    assert out["Layers"] == [str(d.digest) for d in image.manifest.layers]


def test_we_read_skopeos_oci_archive(
    tmp_path: Path, skopeo: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    image = make_image("sk2")
    layout, archive = tmp_path / "ours", tmp_path / "theirs.tar"
    write_layout_by_hand(layout, [(image, "v1")])
    # Without --preserve-digests skopeo would gzip our uncompressed layers on the way.
    skopeo("copy", "--preserve-digests", f"oci:{layout}:v1", f"oci-archive:{archive}:v9")
    with OCIArchiveSource(str(archive), tag="v9") as src:
        root, blobs = read_image(src)
    assert root.digest == image.manifest.digest
    assert blobs == image.all_blobs()


def test_copy_fixture_image_through_an_archive(tmp_path: Path) -> None:
    """The shared busybox fixture, copied layout -> oci-archive -> layout, unchanged."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from fixtures.build import build_image
    finally:
        sys.path.pop(0)
    src_layout = build_image("busybox", tmp_path / "fixtures")
    archive, dst_layout = tmp_path / "bb.tar", tmp_path / "copy"

    def copy(src: Any, sink: Any) -> Descriptor:
        root = src.resolve()
        todo, seen = [root], set()
        while todo:
            desc = todo.pop()
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            with src.open_blob(desc) as f:
                raw = (
                    f.read()
                    if desc.media_type.is_index() or desc.media_type.is_manifest()
                    else None
                )
            if raw is not None:
                doc = (parse_index(raw, desc.media_type) if desc.media_type.is_index()
                       else parse_manifest(raw, desc.media_type))  # fmt: skip
                todo.extend(doc.children())
            with src.open_blob(desc) as f:
                sink.write_blob(desc, f)
        sink.write_root(root)
        return root  # type: ignore[no-any-return]

    with OCILayoutSource(str(src_layout)) as src1, OCIArchiveSink(str(archive), tag="bb") as sink1:
        first = copy(src1, sink1)
    with (
        OCIArchiveSource(str(archive), tag="bb") as src2,
        OCILayoutSink(str(dst_layout), tag="bb") as sink2,
    ):
        second = copy(src2, sink2)
    assert first.digest == second.digest
    for blob in (src_layout / "blobs" / "sha256").iterdir():
        assert (dst_layout / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


def test_we_read_umocis_layout(tmp_path: Path) -> None:
    exe = shutil.which("umoci")
    assert exe, "umoci is required for the interop tests (apt-get install umoci; make apt)"
    layout = tmp_path / "umoci"
    for args in (["init", "--layout", str(layout)], ["new", "--image", f"{layout}:fresh"]):
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"umoci {' '.join(args)}: {proc.stderr}"
    with OCILayoutSource(str(layout), tag="fresh") as src:
        root, blobs = read_image(src)
    assert root.annotations[ANNOTATION_REF_NAME] == "fresh"
    assert root.digest in blobs


def test_docker_archive_damaged_layer_is_a_digest_mismatch(tmp_path: Path) -> None:
    """docker save writes no digests: an uncompressed layer must hash to its diff_id."""
    layer = layer_tar({"etc/motd": b"hello\n"})
    image = SavedImage(saved_config("amd64", [layer]), [layer.replace(b"hello", b"HELLO")], ["x:1"])
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar([image]))
    with pytest.raises(DigestMismatch, match="diff_id"):
        DockerArchiveSource(str(archive)).resolve()


def test_docker_archive_config_must_hash_to_its_name(tmp_path: Path) -> None:
    layer = layer_tar({"etc/motd": b"hello\n"})
    image = SavedImage(saved_config("amd64", [layer]), [layer], ["x:1"])
    raw = docker_save_tar([image])
    cfg_hex = sha(image.config).encoded
    archive = tmp_path / "saved.tar"
    archive.write_bytes(raw.replace(b'"amd64"', b'"arm64"'))  # same length, other hash
    with pytest.raises(DigestMismatch, match=cfg_hex[:12]):
        DockerArchiveSource(str(archive)).resolve()


def test_docker_archive_names_the_image_after_its_repo_tag(
    tmp_path: Path, saved: list[SavedImage]
) -> None:
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_tar(saved[:1]))
    with DockerArchiveSource(str(archive)) as src:
        assert src.resolve().annotations[ANNOTATION_IMAGE_NAME] == "busybox:latest"
