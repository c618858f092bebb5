"""``imgpipe convert --estargz`` / ``--zstdchunked`` through the command line, imgpipe only:
media types and annotations, the config's new DiffIDs, the report, the store as a
destination (unpack checks the DiffIDs), the way back to plain gzip/zstd, the record
file, reproducibility on 1 and 2 cores, and the option errors. The peers read the same
images in test_estargz_write_peers.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import IMGPIPE, run_cli
from treecompare import assert_same, snapshot

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
USIZE = "io.containers.estargz.uncompressed-size"
CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
POSITION = "io.containers.zstd-chunked.manifest-position"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


class Layout:
    """An OCI layout's one image: manifest, config and blobs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        index = json.loads((path / "index.json").read_text())
        self.manifest: dict[str, Any] = json.loads(self.blob(index["manifests"][0]["digest"]))
        self.config: dict[str, Any] = json.loads(self.blob(self.manifest["config"]["digest"]))
        self.root = index["manifests"][0]["digest"]

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest["layers"])


def plain(data: bytes, media_type: str) -> bytes:
    """A layer decompressed: every zstd frame, every gzip member."""
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().stream_reader(data).read()
    out = []
    while data:
        d = zlib.decompressobj(31)
        out.append(d.decompress(data))
        data = d.unused_data
    return b"".join(out)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def convert(*args: str, cpus: str = "") -> subprocess.CompletedProcess[str]:
    if not cpus:
        return run_cli("convert", *args)
    argv = ["taskset", "-c", cpus, str(IMGPIPE), "convert", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_estargz_from_a_docker_image(fixture_dir: Path, tmp_path: Path) -> None:
    src = Layout(fixture_dir / "layered-docker")
    report = tmp_path / "report.json"
    ok(
        convert(
            "--estargz",
            "--report",
            str(report),
            f"oci:{fixture_dir / 'layered-docker'}:layered-docker",
            f"oci:{tmp_path / 'out'}:esgz",
        )
    )
    out = Layout(tmp_path / "out")
    assert out.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert out.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    diff_ids = []
    for layer in out.layers:
        assert layer["mediaType"] == OCI_GZIP
        tar = plain(out.blob(layer["digest"]), OCI_GZIP)
        assert layer["annotations"][USIZE] == str(len(tar))
        assert layer["annotations"][TOC_DIGEST].startswith("sha256:")
        diff_ids.append(sha(tar))
    # the config: the source's, with the new DiffIDs (landmark and TOC entries were added)
    assert out.config["rootfs"]["diff_ids"] == diff_ids
    assert not set(diff_ids) & set(src.config["rootfs"]["diff_ids"])
    assert {k: v for k, v in out.config.items() if k != "rootfs"} == {
        k: v for k, v in src.config.items() if k != "rootfs"
    }
    # only the new config is in the layout (the source's would be unreferenced)
    assert not (
        tmp_path / "out" / "blobs" / "sha256" / src.manifest["config"]["digest"][7:]
    ).exists()
    doc = json.loads(report.read_text())
    assert doc["manifests"][0]["config"]["digest"] == out.manifest["config"]["digest"]
    for entry, before in zip(doc["layers"], src.config["rootfs"]["diff_ids"], strict=True):
        assert entry["format"] == "estargz" and entry["diffIDChanged"] is True
        assert entry["sourceDiffID"] == before and entry["diffID"] in diff_ids


def test_zstdchunked_keeps_the_diff_ids_and_the_config(fixture_dir: Path, tmp_path: Path) -> None:
    src = Layout(fixture_dir / "layered")
    ok(convert("--zstdchunked", f"oci:{src.path}:layered", f"oci:{tmp_path / 'out'}:zc"))
    out = Layout(tmp_path / "out")
    assert out.manifest["config"] == src.manifest["config"]  # the same config blob
    for layer, diff_id in zip(out.layers, src.config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == OCI_ZSTD
        assert set(layer["annotations"]) == {TOC_DIGEST, USIZE, CHECKSUM, POSITION}
        assert sha(plain(out.blob(layer["digest"]), OCI_ZSTD)) == diff_id


def test_estargz_into_the_store_unpacks_with_the_new_diff_ids(
    fixture_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'layered'}:layered", root=root))
    ok(run_cli("convert", "--estargz", "local:layered", "local:layered-esgz", root=root))
    # unpack checks each layer's tar against the (rewritten) config's DiffID
    ok(run_cli("unpack", "layered", "--export", str(tmp_path / "a"), root=root))
    ok(run_cli("unpack", "layered-esgz", "--export", str(tmp_path / "b"), root=root))
    b = snapshot(tmp_path / "b")
    markers = {".no.prefetch.landmark", "stargz.index.json"}
    assert markers <= b.keys() and all(b[m].mode == 0 for m in markers)
    assert_same(snapshot(tmp_path / "a"), b, ignore_paths=markers)
    ok(run_cli("content", "verify", root=root))
    if os.geteuid() == 0:  # runc needs root (CI runs as root)
        out = ok(run_cli("run", "--rm", "layered-esgz", "/bin/cat", "/etc/motd", root=root))
        assert out.stdout == "layer 3: changed\n"


@pytest.mark.parametrize("back", ["gzip", "zstd"])
def test_back_to_a_plain_stream_drops_the_toc_annotations(
    back: str, fixture_dir: Path, tmp_path: Path
) -> None:
    ok(convert("--estargz", f"oci:{fixture_dir / 'layered'}:layered", f"oci:{tmp_path / 'e'}:e"))
    esgz = Layout(tmp_path / "e")
    ok(convert(f"--{back}", f"oci:{tmp_path / 'e'}:e", f"oci:{tmp_path / 'p'}:p"))
    out = Layout(tmp_path / "p")
    for layer, before in zip(out.layers, esgz.layers, strict=True):
        assert layer["digest"] != before["digest"]  # re-encoded, not passed through
        assert not set(layer.get("annotations", {})) & {TOC_DIGEST, USIZE, CHECKSUM, POSITION}
        data = out.blob(layer["digest"])
        if back == "gzip":
            d = zlib.decompressobj(31)
            d.decompress(data)
            assert d.eof and not d.unused_data  # one gzip member: a plain stream
    # the tar stays, and with it the DiffIDs: the config passes through
    assert out.config["rootfs"] == esgz.config["rootfs"]


def test_record_file_puts_files_first(fixture_dir: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    record.write_text('{"path": "/etc/passwd"}\n/bin/busybox\n\n/etc/passwd\n')
    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    ok(convert("--estargz", "--estargz-record-in", str(record), src, f"oci:{tmp_path / 'o'}:o"))
    out = Layout(tmp_path / "o")
    tar = plain(out.blob(out.layers[0]["digest"]), OCI_GZIP)
    start = tar.rindex(b"stargz.index.json\0")
    toc = json.loads(tar[start + 512 :].split(b"\0", 1)[0])
    names = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    landmark = names.index(".prefetch.landmark")
    assert [n.rstrip("/") for n in names[:landmark]] == ["etc", "etc/passwd", "bin", "bin/busybox"]


@pytest.mark.parametrize("fmt", ["estargz", "zstdchunked"])
def test_same_digests_on_one_and_two_cores(fmt: str, fixture_dir: Path, tmp_path: Path) -> None:
    if shutil.which("taskset") is None:
        pytest.fail("taskset is missing: apt-get install util-linux")
    src = f"oci:{fixture_dir / 'layered'}:layered"
    roots = []
    for i, cpus in enumerate(["0", "0,1", "0"]):
        ok(
            convert(
                f"--{fmt}",
                "--estargz-chunk-size",
                "65536",
                src,
                f"oci:{tmp_path / str(i)}:t",
                cpus=cpus,
            )
        )
        roots.append(Layout(tmp_path / str(i)).root)
    assert len(set(roots)) == 1, roots


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--estargz", "--zstd"], 2, "not allowed with"),
        (["--estargz-level", "3"], 2, "need --estargz"),
        (["--zstdchunked", "--estargz-level", "3"], 2, "need --estargz"),
        (["--estargz", "--estargz-chunk-size", "-1"], 2, "0 (the default) or more"),
        (["--estargz", "--estargz-level", "12"], 3, "must be 0-9"),
        (["--estargz", "--level", "3"], 2, "--level needs"),
        (["--estargz", "--estargz-record-in", "/nonexistent/record"], 5, "no such file"),
    ],
)
def test_bad_options_are_clear_errors(
    args: list[str], code: int, message: str, fixture_dir: Path, tmp_path: Path
) -> None:
    proc = convert(*args, f"oci:{fixture_dir / 'busybox'}:busybox", f"oci:{tmp_path / 'o'}:o")
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or code == 2
    assert not (tmp_path / "o").exists()


def test_python_api(fixture_dir: Path, tmp_path: Path) -> None:
    import imgpipe  # the library, as a CI script would call it

    report = imgpipe.convert(
        f"oci:{fixture_dir / 'busybox'}:busybox",
        f"oci:{tmp_path / 'o'}:o",
        seekable="estargz",
        chunk_size=1 << 20,
        estargz_level=6,
    )
    assert report.layers[0].seekable == "estargz" and report.layers[0].source_diff_id
    with pytest.raises(imgpipe.errors.InvalidArgument):
        imgpipe.ConvertOptions(seekable="estargz", compression="zstd")


def test_a_layer_without_end_of_archive_blocks_applies_only_with_its_diff_id(
    tmp_path: Path,
) -> None:
    """stargz-snapshotter's zstd:chunked has no end-of-archive blocks: containerd (Go's
    reader) applies it, so does imgpipe, but only where the DiffID is checked."""
    import io
    import tarfile

    from imgpipe.diff import apply_layer
    from imgpipe.errors import MalformedDocument
    from imgpipe.formats.digest import Digest

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("f")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"abc"))
    tar = buf.getvalue()[:1024]  # header + one data block, no end-of-archive blocks
    (tmp_path / "a").mkdir()
    result = apply_layer(tmp_path / "a", io.BytesIO(tar), expected_diff_id=Digest.parse(sha(tar)))
    assert (tmp_path / "a" / "f").read_bytes() == b"abc" and str(result.diff_id) == sha(tar)
    (tmp_path / "b").mkdir()
    with pytest.raises(MalformedDocument):
        apply_layer(tmp_path / "b", io.BytesIO(tar))
