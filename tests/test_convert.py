"""imgpipe convert on local images: fixture layouts and the store.

Every conversion is checked where it matters: the converted image's layers, decoded
and applied with the layer applier, give the same tree as the original's (treecompare),
each layer's tar matches the config's DiffID, and the documents say what they should.
(Running converted images end to end: tests/test_convert_run.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import after_leases_expire
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from treecompare import Node, assert_same, snapshot

import imgpipe.conversion
from imgpipe.conversion import Converter, ConvertOptions, ConvertReport
from imgpipe.diff import apply_layer
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    InvalidArgument,
    NotFound,
    Unauthorized,
)
from imgpipe.formats.mediatype import MediaType
from imgpipe.metadata.gc import collect
from imgpipe.metadata.labels import LABEL_UNCOMPRESSED
from imgpipe.processors import ProcessorParams, ProcessorRegistry
from imgpipe.processors.ocicrypt import load_private_key
from imgpipe.store import Store

ENC_KEYS = "org.opencontainers.image.enc.keys.jwe"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"

# `imgpipe` itself, run as `python -c` (so a test can run it under another interpreter
# or user, with a preamble of its own).
CLI_SHIM = """
import sys
from imgpipe.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_convert_cli(
    *args: str | os.PathLike[str],
    root: Path | None = None,
    python: str = sys.executable,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    preamble: str = "",
) -> subprocess.CompletedProcess[str]:
    """``imgpipe [--root R] ARGS`` with the convert verbs, as a subprocess."""
    argv = [str(a) for a in args]
    if root is not None:
        argv = ["--root", str(root), *argv]
    return subprocess.run(
        [*prefix, python, "-c", preamble + CLI_SHIM, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# -- reading images back ---------------------------------------------------------------------

BlobOpener = Callable[[str], BinaryIO]


def layout_opener(layout: Path) -> BlobOpener:
    def open_blob(digest: str) -> BinaryIO:
        alg, hexa = digest.split(":")
        return (layout / "blobs" / alg / hexa).open("rb")

    return open_blob


def store_opener(store: Store) -> BlobOpener:
    return lambda digest: store.content.open(Digest.parse(digest))


def read_json(open_blob: BlobOpener, digest: str) -> dict[str, Any]:
    with open_blob(digest) as f:
        return json.loads(f.read())  # type: ignore[no-any-return]


def layout_root(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return entry  # type: ignore[no-any-return]
    raise AssertionError(f"{layout} has no tag {tag}")


def manifests_of(open_blob: BlobOpener, root: dict[str, Any]) -> list[dict[str, Any]]:
    """The image manifests under ``root`` (an index entry or manifest descriptor)."""
    doc = read_json(open_blob, root["digest"])
    if "manifests" in doc:
        out = []
        for entry in doc["manifests"]:
            out += manifests_of(open_blob, entry)
        return out
    return [doc]


def diff_ids(
    open_blob: BlobOpener, manifest: dict[str, Any], keys: tuple[Any, ...] = ()
) -> list[str]:
    """Each layer decoded through the processors and hashed."""
    reg = ProcessorRegistry(entry_points=False)
    params = ProcessorParams(decrypt_keys=keys)
    out = []
    for layer in manifest["layers"]:
        desc = Descriptor.from_json(layer)
        sha = hashlib.sha256()
        with reg.open_decoded(open_blob(layer["digest"]), desc, params) as tar:
            while chunk := tar.read(1 << 20):
                sha.update(chunk)
        out.append("sha256:" + sha.hexdigest())
    return out


def apply_image(
    open_blob: BlobOpener, manifest: dict[str, Any], dest: Path, keys: tuple[Any, ...] = ()
) -> dict[str, Node]:
    """Apply every layer (decoded by the processors) into ``dest``; the tree's snapshot.
    Each layer's DiffID is checked against the config on the way."""
    config = read_json(open_blob, manifest["config"]["digest"])
    reg = ProcessorRegistry(entry_points=False)
    params = ProcessorParams(decrypt_keys=keys)
    dest.mkdir(parents=True)
    for i, layer in enumerate(manifest["layers"]):
        desc = Descriptor.from_json(layer)
        with reg.open_decoded(open_blob(layer["digest"]), desc, params) as tar:
            apply_layer(dest, tar, expected_diff_id=Digest.parse(config["rootfs"]["diff_ids"][i]))
    return snapshot(dest)


@pytest.fixture(scope="session")
def original_trees(
    fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, Node]]:
    """The rootfs snapshot of a fixture image (first manifest), computed once each."""
    cache: dict[str, dict[str, Node]] = {}
    base = tmp_path_factory.mktemp("original-trees")

    def tree(name: str) -> dict[str, Node]:
        if name not in cache:
            opener = layout_opener(fixture_dir / name)
            manifest = manifests_of(opener, layout_root(fixture_dir / name, name))[0]
            cache[name] = apply_image(opener, manifest, base / name)
        return cache[name]

    return tree


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RSA key pair (PKCS#8 private key, SPKI public key), and a second private key."""
    d = tmp_path_factory.mktemp("convert-keys")
    for name in ("key", "other"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (d / f"{name}.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (d / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return d


@pytest.fixture
def converter(tmp_path: Path) -> Iterator[Converter]:
    with Converter(root=tmp_path / "root") as c:
        yield c


def _convert(converter: Converter, src: str, dst: str, **kw: Any) -> ConvertReport:
    return converter.convert(src, dst, ConvertOptions(**kw))


# -- each conversion keeps the rootfs ----------------------------------------------------------

CONVERSIONS: dict[str, tuple[dict[str, Any], str]] = {
    # name: (options, media type every layer must end with)
    "zstd": ({"compression": "zstd"}, "tar+zstd"),
    "gzip": ({"compression": "gzip"}, "gzip"),
    "uncompress": ({"compression": "none"}, "tar"),
    "oci": ({"oci": True}, ""),
    "zstd-level-19": ({"compression": "zstd", "level": 19}, "tar+zstd"),
}


@pytest.mark.parametrize("conversion", sorted(CONVERSIONS))
@pytest.mark.parametrize(
    "image", ["layered", "layered-docker", "layered-zstd", "layered-uncompressed", "busybox"]
)
def test_each_conversion_keeps_the_rootfs(  # noqa: PLR0917 (fixtures)
    conversion: str,
    image: str,
    fixture_dir: Path,
    tmp_path: Path,
    converter: Converter,
    original_trees: Callable[[str], dict[str, Node]],
) -> None:
    opts, suffix = CONVERSIONS[conversion]
    out = tmp_path / "out"
    report = _convert(converter, f"oci:{fixture_dir / image}:{image}", f"oci:{out}:conv", **opts)
    opener = layout_opener(out)
    root = layout_root(out, "conv")
    assert root["digest"] == report.destination_digest
    (manifest,) = manifests_of(opener, root)
    src_manifest = manifests_of(
        layout_opener(fixture_dir / image), layout_root(fixture_dir / image, image)
    )[0]
    for layer in manifest["layers"]:
        assert layer["mediaType"].endswith(suffix), layer["mediaType"]
    if conversion == "oci" or "zstd" in conversion:
        assert manifest["mediaType"] == OCI_MANIFEST
        assert manifest["config"]["mediaType"] == OCI_CONFIG
    # the config never changes: DiffIDs stay valid
    assert manifest["config"]["digest"] == src_manifest["config"]["digest"]
    assert_same(original_trees(image), apply_image(opener, manifest, tmp_path / "tree"))
    # a layer already in the target form is the same blob; the others are not
    forms = {"zstd": "zstd", "gzip": "gzip", "uncompress": ""}
    target = forms.get(conversion.split("-", maxsplit=1)[0])
    for before, after in zip(src_manifest["layers"], manifest["layers"], strict=True):
        same_form = target is None or MediaType(before["mediaType"]).compression() == target
        assert (after["digest"] == before["digest"]) == same_form


def test_report_describes_every_layer(
    fixture_dir: Path, tmp_path: Path, converter: Converter
) -> None:
    report = _convert(
        converter,
        f"oci:{fixture_dir / 'layered'}:layered",
        f"oci:{tmp_path / 'o'}:z",
        compression="zstd",
    )
    data = report.to_json()
    src = manifests_of(
        layout_opener(fixture_dir / "layered"), layout_root(fixture_dir / "layered", "layered")
    )[0]
    assert data["sourceDigest"] == layout_root(fixture_dir / "layered", "layered")["digest"]
    assert data["destinationDigest"] == layout_root(tmp_path / "o", "z")["digest"]
    assert [entry["before"]["digest"] for entry in data["layers"]] == [
        layer["digest"] for layer in src["layers"]
    ]
    config = read_json(layout_opener(fixture_dir / "layered"), src["config"]["digest"])
    for entry, diff_id in zip(data["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert entry["action"] == "converted"
        assert entry["after"]["mediaType"] == LAYER + "+zstd"
        assert entry["diffID"] == diff_id
        assert entry["seconds"] >= 0
    totals = data["totals"]
    assert totals["layers"] == totals["converted"] == len(src["layers"])
    assert totals["bytesBefore"] == sum(layer["size"] for layer in src["layers"])


# -- reproducible, idempotent, DiffIDs kept ------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_same_input_same_options_same_digests(
    compression: str, fixture_dir: Path, tmp_path: Path
) -> None:
    digests = []
    for i in range(2):
        with Converter(root=tmp_path / f"root{i}") as c:  # no shared cache
            report = _convert(
                c,
                f"oci:{fixture_dir / 'layered'}:layered",
                f"oci:{tmp_path / f'o{i}'}:x",
                compression=compression,
            )
        digests.append((report.destination_digest, [x.after.digest for x in report.layers]))
    assert digests[0] == digests[1]


def test_zstd_digests_do_not_depend_on_the_worker_count(fixture_dir: Path, tmp_path: Path) -> None:
    # the default (one worker per CPU) is reproducible on any machine: 1 or 3 workers
    # give the same image; 0 (single-threaded) is another framing, the same tars
    src = f"oci:{fixture_dir / 'layered'}:layered"
    got = {}
    for threads in (-1, 1, 3, 0):
        with Converter(root=tmp_path / f"root{threads}") as c:  # no shared cache
            report = _convert(
                c, src, f"oci:{tmp_path / f'o{threads}'}:x", compression="zstd",
                zstd_threads=threads,
            )  # fmt: skip
        got[threads] = (report.destination_digest, [x.after.digest for x in report.layers])
    assert got[-1] == got[1] == got[3]
    assert got[0][1] != got[1][1]
    with Converter(root=tmp_path / "shared") as c:  # the cache knows: 3 workers = 1 worker
        _convert(c, src, f"oci:{tmp_path / 'c1'}:x", compression="zstd", zstd_threads=1)
        again = _convert(c, src, f"oci:{tmp_path / 'c1'}:y", compression="zstd", zstd_threads=3)
    assert [x.after.digest for x in again.layers] == got[1][1]
    assert {x.action for x in again.layers} == {"exists"}


def test_encryption_is_not_reproducible_by_design(
    fixture_dir: Path, tmp_path: Path, converter: Converter, keys: Path
) -> None:
    a, b = (
        _convert(
            converter,
            f"oci:{fixture_dir / 'busybox'}:busybox",
            f"oci:{tmp_path / n}:e",
            recipients=[f"jwe:{keys / 'key.pub'}"],
        )
        for n in ("a", "b")
    )
    assert a.layers[0].after.digest != b.layers[0].after.digest  # fresh key and nonce


def test_zstd_gzip_zstd_keeps_diff_ids_and_bytes(
    fixture_dir: Path, tmp_path: Path, converter: Converter
) -> None:
    src = f"oci:{fixture_dir / 'layered'}:layered"
    first = _convert(converter, src, f"oci:{tmp_path / 'z1'}:z", compression="zstd")
    _convert(converter, f"oci:{tmp_path / 'z1'}:z", f"oci:{tmp_path / 'g'}:g", compression="gzip")
    with Converter(root=tmp_path / "fresh") as fresh:  # no cache: really converted again
        last = _convert(
            fresh, f"oci:{tmp_path / 'g'}:g", f"oci:{tmp_path / 'z2'}:z", compression="zstd"
        )
    assert last.destination_digest == first.destination_digest
    opener = layout_opener(tmp_path / "z2")
    (manifest,) = manifests_of(opener, layout_root(tmp_path / "z2", "z"))
    config = read_json(opener, manifest["config"]["digest"])
    assert diff_ids(opener, manifest) == config["rootfs"]["diff_ids"]
    assert [x.diff_id for x in last.layers] == config["rootfs"]["diff_ids"]


def test_layers_in_target_form_pass_through_byte_for_byte(
    fixture_dir: Path, tmp_path: Path, converter: Converter
) -> None:
    report = _convert(
        converter,
        f"oci:{fixture_dir / 'layered-zstd'}:layered-zstd",
        f"oci:{tmp_path / 'o'}:z",
        compression="zstd",
    )
    assert {x.action for x in report.layers} == {"copied"}
    # nothing changed, so the manifest keeps its bytes and digest
    assert report.destination_digest == report.source_digest


def test_docker_to_oci_keeps_config_bytes_and_layer_blobs(
    fixture_dir: Path, tmp_path: Path, converter: Converter
) -> None:
    report = _convert(
        converter,
        f"oci:{fixture_dir / 'layered-docker'}:layered-docker",
        f"oci:{tmp_path / 'o'}:o",
        oci=True,
    )
    src = manifests_of(
        layout_opener(fixture_dir / "layered-docker"),
        layout_root(fixture_dir / "layered-docker", "layered-docker"),
    )[0]
    (manifest,) = manifests_of(layout_opener(tmp_path / "o"), layout_root(tmp_path / "o", "o"))
    assert src["mediaType"].startswith("application/vnd.docker.")
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"] == {**src["config"], "mediaType": OCI_CONFIG}
    assert [x["digest"] for x in manifest["layers"]] == [x["digest"] for x in src["layers"]]
    assert {x["mediaType"] for x in manifest["layers"]} == {LAYER + "+gzip"}
    assert report.after.media_type == OCI_MANIFEST


def test_index_keeps_chosen_platforms(
    fixture_dir: Path, tmp_path: Path, converter: Converter
) -> None:
    src = f"oci:{fixture_dir / 'busybox-multiarch'}:busybox-multiarch"
    index = read_json(
        layout_opener(fixture_dir / "busybox-multiarch"),
        layout_root(fixture_dir / "busybox-multiarch", "busybox-multiarch")["digest"],
    )
    platforms = [e["platform"] for e in index["manifests"]]
    assert len(platforms) >= 2
    want = platforms[1]
    text = f"{want['os']}/{want['architecture']}" + (
        f"/{want['variant']}" if want.get("variant") else ""
    )
    report = _convert(
        converter, src, f"oci:{tmp_path / 'one'}:x", compression="zstd", platforms=[text]
    )
    out = read_json(layout_opener(tmp_path / "one"), layout_root(tmp_path / "one", "x")["digest"])
    assert out["mediaType"] == OCI_INDEX
    assert [e["platform"] for e in out["manifests"]] == [want]
    assert [m.platform for m in report.manifests] == [text]
    every = _convert(converter, src, f"oci:{tmp_path / 'all'}:x", compression="zstd")
    out = read_json(layout_opener(tmp_path / "all"), layout_root(tmp_path / "all", "x")["digest"])
    assert [e["platform"] for e in out["manifests"]] == platforms
    assert len(every.manifests) == len(platforms)
    with pytest.raises(NotFound, match="no manifest for"):
        _convert(converter, src, f"oci:{tmp_path / 'none'}:x", platforms=["linux/s390x"])


# -- encryption ------------------------------------------------------------------------------


def test_encrypt_then_decrypt_restores_every_layer(
    fixture_dir: Path,
    tmp_path: Path,
    converter: Converter,
    keys: Path,
    original_trees: Callable[[str], dict[str, Node]],
) -> None:
    src = f"oci:{fixture_dir / 'layered'}:layered"
    enc = _convert(converter, src, "local:enc/layered:1", recipients=[f"jwe:{keys / 'key.pub'}"])
    store = converter.store()
    opener = store_opener(store)
    (manifest,) = manifests_of(opener, {"digest": enc.destination_digest})
    assert manifest["mediaType"] == OCI_MANIFEST
    for layer in manifest["layers"]:
        assert layer["mediaType"] == LAYER + "+gzip+encrypted"
        assert ENC_KEYS in layer["annotations"]
    key = load_private_key(str(keys / "key.pem"))
    tree = apply_image(opener, manifest, tmp_path / "enc-tree", keys=(key,))
    assert_same(original_trees("layered"), tree)
    # the encrypted blob has the plaintext's length (AES-CTR)
    assert [x.after.size for x in enc.layers] == [x.before.size for x in enc.layers]

    dec = _convert(
        converter,
        "local:enc/layered:1",
        "local:dec/layered:1",
        decrypt_keys=[f"{keys / 'key.pem'}"],
    )
    (plain,) = manifests_of(opener, {"digest": dec.destination_digest})
    src_manifest = manifests_of(
        layout_opener(fixture_dir / "layered"), layout_root(fixture_dir / "layered", "layered")
    )[0]
    assert [x["digest"] for x in plain["layers"]] == [x["digest"] for x in src_manifest["layers"]]
    for layer in plain["layers"]:
        assert layer["mediaType"] == LAYER + "+gzip"
        assert not any(
            k.startswith("org.opencontainers.image.enc.") for k in layer.get("annotations", {})
        )


def test_encrypt_only_the_layers_asked(
    fixture_dir: Path, tmp_path: Path, converter: Converter, keys: Path
) -> None:
    report = _convert(
        converter,
        f"oci:{fixture_dir / 'layered'}:layered",
        f"oci:{tmp_path / 'o'}:o",
        recipients=[f"jwe:{keys / 'key.pub'}"],
        encrypt_layers=[0, -1],
    )
    encrypted = [x.after.media_type.endswith("+encrypted") for x in report.layers]
    assert encrypted == [True] + [False] * (len(encrypted) - 2) + [True]
    with pytest.raises(InvalidArgument, match="layers"):
        _convert(converter, f"oci:{fixture_dir / 'layered'}:layered", f"oci:{tmp_path / 'p'}:o",
                 recipients=[f"jwe:{keys / 'key.pub'}"], encrypt_layers=[40])  # fmt: skip


def test_encrypted_layers_without_a_key_are_refused_before_anything_is_written(
    fixture_dir: Path, tmp_path: Path, converter: Converter, keys: Path
) -> None:
    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    _convert(converter, src, f"oci:{tmp_path / 'enc'}:e", recipients=[f"jwe:{keys / 'key.pub'}"])
    with pytest.raises(Unauthorized, match="decryption key"):
        _convert(
            converter, f"oci:{tmp_path / 'enc'}:e", f"oci:{tmp_path / 'z'}:z", compression="zstd"
        )
    with pytest.raises(Unauthorized):
        _convert(converter, f"oci:{tmp_path / 'enc'}:e", f"oci:{tmp_path / 'd'}:d",
                 decrypt_keys=[str(keys / "other.pem")])  # fmt: skip
    for out in ("z", "d"):
        index = tmp_path / out / "index.json"
        assert not index.exists() or json.loads(index.read_text())["manifests"] == []
    # an encrypted layer with nothing asked of it passes through
    same = _convert(converter, f"oci:{tmp_path / 'enc'}:e", f"oci:{tmp_path / 'c'}:c")
    assert same.destination_digest == same.source_digest


# -- the store -------------------------------------------------------------------------------


def test_store_to_store_labels_for_gc(
    fixture_dir: Path, tmp_path: Path, original_trees: Callable[[str], dict[str, Node]]
) -> None:
    import imgpipe

    with Store(tmp_path / "root") as store:
        imgpipe.pull(f"oci:{fixture_dir / 'layered'}:layered", name="layered", store=store)
        with Converter(store=store) as c:
            report = c.convert("layered", "layered:zstd", ConvertOptions(compression="zstd"))
        rec = store.db.get_image("docker.io/library/layered:zstd")
        assert str(rec.target.digest) == report.destination_digest
        labels = store.db.content_labels(rec.target.digest)
        manifest = read_json(store_opener(store), report.destination_digest)
        assert labels["containerd.io/gc.ref.content.config"] == manifest["config"]["digest"]
        for i, layer in enumerate(manifest["layers"]):
            assert labels[f"containerd.io/gc.ref.content.l.{i}"] == layer["digest"]
            assert (
                store.db.content_labels(Digest.parse(layer["digest"]))[LABEL_UNCOMPRESSED]
                == report.layers[i].diff_id
            )
        # the original goes; the converted image keeps everything it needs
        store.db.delete_image("docker.io/library/layered:latest")
        collect(store.db, store.content)
        tree = apply_image(store_opener(store), manifest, tmp_path / "tree")
        assert_same(original_trees("layered"), tree)


def test_corrupt_source_layer_fails_and_writes_no_tag_or_image(
    layout_copy: Callable[[str], Path], tmp_path: Path, converter: Converter
) -> None:
    layout = layout_copy("layered")
    manifest = manifests_of(layout_opener(layout), layout_root(layout, "layered"))[0]
    victim = manifest["layers"][1]["digest"].split(":")[1]
    blob = layout / "blobs" / "sha256" / victim
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        _convert(converter, f"oci:{layout}:layered", f"oci:{tmp_path / 'o'}:o", compression="zstd")
    assert not (tmp_path / "o" / "index.json").exists()
    with pytest.raises(DigestMismatch):
        _convert(converter, f"oci:{layout}:layered", "local:broken:1", compression="zstd")
    store = converter.store()
    assert store.db.list_images() == []
    # what the failed conversion committed stays for a retry until its lease expires
    after_leases_expire(store)
    assert list(store.content.walk()) == []


def test_a_layer_that_is_not_what_the_config_says_is_refused(
    layout_copy: Callable[[str], Path], tmp_path: Path, converter: Converter
) -> None:
    """Decoding checks the DiffID before the destination commits the layer."""
    layout = layout_copy("layered-uncompressed")
    opener = layout_opener(layout)
    entry = layout_root(layout, "layered-uncompressed")
    manifest = manifests_of(opener, entry)[0]
    config = read_json(opener, manifest["config"]["digest"])
    config["rootfs"]["diff_ids"][2] = "sha256:" + "1" * 64

    def put(obj: dict[str, Any]) -> tuple[str, int]:
        raw = json.dumps(obj).encode()
        d = Digest.from_bytes(raw)
        (layout / "blobs" / "sha256" / d.encoded).write_bytes(raw)
        return str(d), len(raw)

    manifest["config"]["digest"], manifest["config"]["size"] = put(config)
    mdigest, msize = put(manifest)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = [{**entry, "digest": mdigest, "size": msize}]
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(DigestMismatch, match="config says"):
        _convert(converter, f"oci:{layout}:layered-uncompressed", "local:bad:1", compression="gzip")
    assert converter.store().db.list_images() == []


def test_module_is_callable_and_the_stage_runs(fixture_dir: Path, tmp_path: Path) -> None:
    from imgpipe.pipeline import Pipeline

    report = imgpipe.convert(
        f"oci:{fixture_dir / 'busybox'}:busybox",
        f"oci:{tmp_path / 'o'}:z",
        compression="zstd",
        root=tmp_path / "r",
    )
    assert isinstance(report, ConvertReport)
    with Store(tmp_path / "root") as store:
        stage = imgpipe.conversion.Convert(
            f"oci:{tmp_path / 'p'}:z", ConvertOptions(compression="zstd")
        )
        again = Pipeline([stage]).run(f"oci:{fixture_dir / 'busybox'}:busybox", store=store)
    assert again.destination_digest == report.destination_digest


def test_the_stage_converts_under_the_runs_lease_or_with_no_store(
    fixture_dir: Path, tmp_path: Path
) -> None:
    from imgpipe.pipeline import Context, Pipeline

    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    leases: list[object] = []
    seen: list[tuple[int, list[Digest]]] = []

    class Lease:
        name = "lease"

        def run(self, item: str, ctx: Context) -> str:
            leases.append(ctx.lease)
            return item

    class After:
        name = "after"

        def run(self, item: ConvertReport, ctx: Context) -> ConvertReport:
            seen.append((len(ctx.store.db.leases()), list(ctx.created)))
            return item

    stage = imgpipe.conversion.Convert("local:z:1", ConvertOptions(compression="zstd"))
    with Store(tmp_path / "root") as store:
        report = Pipeline([Lease(), stage, After()]).run(src, store=store)
        assert store.db.get_image("docker.io/library/z:1").target.digest == Digest.parse(
            report.destination_digest
        )
        assert leases[0] is not None
        # the conversion wrote under the run's one lease, into the run's rollback list
        n_leases, created = seen[0]
        assert n_leases == 1
        assert Digest.parse(report.destination_digest) in created
        assert store.db.leases() == []
    # without a store: a layout to a layout needs none
    out = imgpipe.conversion.Convert(f"oci:{tmp_path / 'o'}:z", ConvertOptions(compression="zstd"))
    again = Pipeline([Lease(), out]).run(src)  # no store
    assert leases[1] is None
    assert again.destination_digest == report.destination_digest


def test_a_user_stage_between_map_layers_and_write_refuses_a_big_layer(
    fixture_dir: Path, converter: Converter
) -> None:
    """MapLayers hands Write model Layers of the destination; a stage between them sees
    every blob in and nothing named, and refusing rolls the store back (the pipeline's
    lease and rollback, not a second one)."""
    from imgpipe.conversion import Mapped
    from imgpipe.formats.errors import ResourceLimit
    from imgpipe.image import Layer
    from imgpipe.pipeline import Context

    seen: list[tuple[Layer, Layer]] = []

    class MaxLayer:
        name = "max-layer"

        def run(self, item: Mapped, ctx: Context) -> Mapped:
            assert ctx.lease is not None  # the destination is the run's store
            for result in item.results.values():
                layer = result.layer
                if layer.media_type.is_layer():
                    seen.append((layer, result.layer.source))
                    if layer.descriptor.size > 1024:
                        raise ResourceLimit(f"layer {layer.descriptor.digest} is too big")
            return item

    src = f"oci:{fixture_dir / 'layered'}:layered"
    pipeline = converter.pipeline(ConvertOptions(compression="zstd"))
    pipeline = pipeline.insert_after("map-layers", MaxLayer())
    assert pipeline.names() == ["resolve", "map-layers", "max-layer", "write"]
    with pytest.raises(ResourceLimit, match="too big"):
        converter.run_pipeline(pipeline, converter.request(src, "local:big:1"))
    store = converter.store()
    assert store.db.list_images() == []
    after_leases_expire(store)  # the blobs the conversion wrote were kept until then
    assert list(store.content.walk()) == []
    # the layers the stage saw: zstd now, the DiffID checked, readable (verified)
    layer, source = seen[0]
    assert str(layer.media_type).endswith("tar+zstd")
    assert layer.diff_id() == source.diff_id()
    assert layer.descriptor.digest != source.descriptor.digest


def test_a_user_stage_reads_the_mapped_layers_back(fixture_dir: Path, converter: Converter) -> None:
    from imgpipe.conversion import Mapped
    from imgpipe.pipeline import Context

    digests: list[tuple[str, str, str]] = []

    class ReadBack:
        name = "read-back"

        def run(self, item: Mapped, ctx: Context) -> Mapped:
            for result in item.results.values():
                layer = result.layer
                if layer.media_type.is_layer():
                    with layer.open_compressed() as f:
                        blob = hashlib.sha256(f.read()).hexdigest()
                    with layer.open_uncompressed() as f:
                        tar = hashlib.sha256(f.read()).hexdigest()
                    digests.append((layer.descriptor.digest.encoded, blob, tar))
                    assert tar == layer.diff_id().encoded
            return item

    src = f"oci:{fixture_dir / 'layered'}:layered"
    pipeline = converter.pipeline(ConvertOptions(compression="zstd"))
    report = converter.run_pipeline(
        pipeline.insert_before("write", ReadBack()), converter.request(src, "local:zstd:1")
    )
    assert [d for d, _, _ in digests] == [
        layer.after.digest.split(":")[1] for layer in report.layers
    ]
    assert all(d == blob for d, blob, _ in digests)
    assert converter.store().db.get_image("docker.io/library/zstd:1").target.digest == Digest.parse(
        report.destination_digest
    )


# -- the command -----------------------------------------------------------------------------


def test_cli_convert_with_report_and_exit_codes(
    fixture_dir: Path, tmp_path: Path, keys: Path, layout_copy: Callable[[str], Path]
) -> None:
    root = tmp_path / "root"
    src = f"oci:{fixture_dir / 'layered'}:layered"
    proc = run_convert_cli("convert", "--zstd", "--report", tmp_path / "r.json", src,
                           f"oci:{tmp_path / 'o'}:z", root=root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert proc.stdout.split() == [f"oci:{tmp_path / 'o'}:z", report["destinationDigest"]]
    assert report["totals"]["converted"] == len(report["layers"])

    proc = run_convert_cli(
        "encrypt", "--recipient", f"jwe:{keys / 'key.pub'}", src, "enc:1", root=root
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_convert_cli("--quiet", "convert", "--zstd", "enc:1", "z:1", root=root)
    assert proc.returncode == 12, proc.stderr  # encrypted, no key: unauthorized
    assert proc.stderr.count("\n") == 1 and "decryption key" in proc.stderr
    proc = run_convert_cli("decrypt", "--key", keys / "other.pem", "enc:1", "dec:1", root=root)
    assert proc.returncode == 12, proc.stderr
    proc = run_convert_cli(
        "decrypt", "--json", "--key", keys / "key.pem", "enc:1", "dec:1", root=root
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["event"] == "result"

    layout = layout_copy("busybox")
    manifest = manifests_of(layout_opener(layout), layout_root(layout, "busybox"))[0]
    blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    proc = run_convert_cli("convert", "--gzip", "--uncompress", src, "x:1", root=root)
    assert proc.returncode == 2
    proc = run_convert_cli(
        "--quiet",
        "convert",
        "--zstd",
        f"oci:{layout}:busybox",
        f"oci:{tmp_path / 'b'}:b",
        root=root,
    )
    assert proc.returncode == 8, proc.stderr
    assert "imgpipe: error:" in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_convert_cli("convert", "--level", "30", "--zstd", src, "x:1", root=root)
    assert proc.returncode == 3, proc.stderr
