"""The lazy image model (imgpipe.image) over every end: the store and an OCI layout;
the one platform choice and the one key check."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

import imgpipe
from imgpipe import Store
from imgpipe.errors import DigestMismatch, InvalidArgument, NotFound, Unauthorized
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.platform import Platform, host_platform
from imgpipe.formats.reference import parse_transport
from imgpipe.image import (
    BlobImage,
    BlobIndex,
    Image,
    Index,
    Layer,
    check_layer_keys,
    load,
    select,
)
from imgpipe.image.lazy import MAX_INDEX_DEPTH
from imgpipe.transports import open_source


def _layout_image(fixture_dir: Path, name: str) -> tuple[object, Descriptor]:
    src = open_source(parse_transport(f"oci:{fixture_dir / name}:{name}"))
    return src, src.resolve()


def _as_image(root: BlobImage | BlobIndex) -> BlobImage:
    if isinstance(root, BlobIndex):
        (only,) = root.manifests()
        assert isinstance(only, BlobImage)
        return only
    return root


@pytest.mark.parametrize("name", ["layered", "layered-zstd", "layered-uncompressed"])
def test_layout_image_layers_decode_to_their_diff_ids(fixture_dir: Path, name: str) -> None:
    src, root = _layout_image(fixture_dir, name)
    with src:  # type: ignore[attr-defined]
        img = _as_image(load(src, root))  # type: ignore[arg-type]
        assert isinstance(img, Image)
        config = img.config()
        layers = img.layers()
        assert len(layers) == len(config.diff_ids) == 4
        assert img.platform() == config.platform()
        for layer, diff_id in zip(layers, config.diff_ids, strict=True):
            assert isinstance(layer, Layer)
            assert layer.diff_id() == diff_id
            with layer.open_compressed() as f:
                assert hashlib.sha256(f.read()).hexdigest() == layer.descriptor.digest.hex
            with layer.open_uncompressed() as tar:
                assert "sha256:" + hashlib.sha256(tar.read()).hexdigest() == str(diff_id)
            with layer.open_uncompressed() as tar, tarfile.open(fileobj=tar, mode="r|") as t:
                assert any(True for _ in t)


def test_a_layer_outside_an_image_hashes_its_diff_id(fixture_dir: Path) -> None:
    from imgpipe.image import BlobLayer

    src, root = _layout_image(fixture_dir, "layered")
    with src:  # type: ignore[attr-defined]
        img = _as_image(load(src, root))  # type: ignore[arg-type]
        first = img.layers()[0]
        alone = BlobLayer(src, first.descriptor)  # type: ignore[arg-type]
        assert alone.diff_id() == first.diff_id()


def test_store_index_children_skip_platforms_never_pulled(fixture_dir: Path, store: Store) -> None:
    rec = imgpipe.pull(f"oci:{fixture_dir / 'busybox-multiarch'}:busybox-multiarch", store=store)
    root = load(store.content, rec.target)
    assert isinstance(root, Index) and isinstance(root, BlobIndex)
    with pytest.raises(NotFound):
        root.children()  # the other platform's manifest is not in the store
    images = root.manifests(skip_missing=True)
    assert len(images) == 1
    assert images[0].platform() == host_platform() or images[0].platform() is not None
    assert select.pick(images, None, lambda i: i.platform()) is images[0]


def test_a_damaged_blob_is_refused_on_read(layout_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layout = layout_copy("layered")
    src = open_source(parse_transport(f"oci:{layout}:layered"))
    with src:
        img = _as_image(load(src, src.resolve()))
        layer = img.layers()[1].descriptor
        path = layout / "blobs" / "sha256" / layer.digest.hex
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.chmod(0o644)
        path.write_bytes(bytes(data))
        with pytest.raises(DigestMismatch), img.layers()[1].open_compressed() as f:
            f.read()


def test_index_nesting_is_bounded(fixture_dir: Path) -> None:
    src, root = _layout_image(fixture_dir, "layered")
    with src, pytest.raises(InvalidArgument, match="nesting deeper"):  # type: ignore[attr-defined]
        load(src, root, depth=MAX_INDEX_DEPTH + 1)  # type: ignore[arg-type]


def _d(n: int, platform: str | None) -> Descriptor:
    return Descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        Digest("sha256", f"{n:064x}"),
        1,
        platform=Platform.parse(platform) if platform else None,
    )


def test_pick_one_candidate_without_a_platform_is_that_one() -> None:
    other = "linux/arm64" if host_platform().architecture != "arm64" else "linux/amd64"
    only = [_d(1, other)]
    assert select.pick(only, None) is only[0]
    assert select.best(only, None) is None  # pull's rule: the host must match
    assert select.pick(only, Platform.parse(other)) is only[0]


def test_follow_keeps_untyped_entries_and_lists_platforms() -> None:
    import json

    from imgpipe.formats.manifest import parse_index

    host = host_platform()
    other = "linux/arm64" if host.architecture != "arm64" else "linux/amd64"
    entries = [_d(1, other), _d(2, str(host)), _d(3, None)]

    def index(ds: list[Descriptor]) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [d.to_json() for d in ds],
        }
        return json.dumps(doc).encode()

    idx = parse_index(index(entries))
    picked = select.follow(idx, None, False)
    assert [d.digest for d in picked] == [entries[1].digest, entries[2].digest]
    assert select.follow(idx, None, True) == idx.manifests
    with pytest.raises(NotFound, match=f"no manifest for platform {host}.*has: {other}"):
        select.follow(parse_index(index(entries[:1])), None, False)
    assert select.matching(entries, [Platform.parse(other)]) == [entries[0], entries[2]]
    assert select.matching(entries, []) == entries


def test_check_layer_keys_names_the_layer(tmp_path: Path) -> None:
    import io

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from imgpipe.processors.ocicrypt import (
        DecryptKey,
        EncryptingReader,
        load_recipient,
    )

    def keypair(name: str) -> tuple[DecryptKey, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        pub = tmp_path / f"{name}.pub"
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return DecryptKey(key), pub

    mine, mine_pub = keypair("mine")
    theirs, _ = keypair("theirs")
    r = EncryptingReader(io.BytesIO(b"layer"), recipients=[load_recipient(f"jwe:{mine_pub}")])
    r.read()
    enc = Descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        Digest("sha256", "0" * 64),
        1,
        annotations=r.annotations(),
    )
    plain = _d(9, None)
    for keys, hint in (([], True), ([theirs], False)):
        with pytest.raises(Unauthorized) as e:
            check_layer_keys([plain, enc], keys)
        assert f"layer 2/2 ({enc.digest}" in str(e.value)
        assert ("--decrypt-key" in str(e.value)) is hint
    check_layer_keys([plain, enc], [theirs, mine])
    check_layer_keys([plain], [])


def test_nothing_left_open(fixture_dir: Path, tmp_path: Path) -> None:
    # the model holds no handle of its own: a copied layout can be removed at once
    copy = tmp_path / "l"
    shutil.copytree(fixture_dir / "layered", copy)
    src = open_source(parse_transport(f"oci:{copy}:layered"))
    with src:
        _as_image(load(src, src.resolve())).config()
    shutil.rmtree(copy)
