"""Digests, media types, descriptors, chain IDs and the public namespace of formats."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgpipe import formats
from imgpipe.formats import (
    DigestMismatch,
    InvalidArgument,
    InvalidDigest,
    MalformedDocument,
    chain_id,
    chain_ids,
)
from imgpipe.formats import mediatype as m
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.mediatype import MediaType
from imgpipe.formats.platform import Platform

HEX64 = "a" * 64
HEX128 = "b" * 128

# ---------------------------------------------------------------------------- digests


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (f"sha256:{HEX64}", True),
        (f"sha512:{HEX128}", True),
        (f"sha256:{'0123456789abcdef' * 4}", True),
        (f"sha256:{HEX64[:-1]}", False),  # too short
        (f"sha256:{HEX64}a", False),  # too long
        (f"sha256:{'A' * 64}", False),  # uppercase hex is refused by the spec
        (f"sha256:{'g' * 64}", False),  # not hex
        (f"sha512:{HEX64}", False),  # length of the wrong algorithm
        (f"md5:{'a' * 32}", False),  # unknown algorithm
        (f"SHA256:{HEX64}", False),  # algorithm is case-sensitive
        (HEX64, False),  # missing algorithm
        ("sha256:", False),
        ("", False),
        (f" sha256:{HEX64}", False),
        (f"sha256:{HEX64}\n", False),
    ],
)
def test_digest_parse_table(text: str, ok: bool) -> None:
    if ok:
        d = Digest.parse(text)
        assert str(d) == text
        assert d == Digest.parse(text)
    else:
        with pytest.raises(InvalidDigest):
            Digest.parse(text)


def test_digest_parse_non_string_is_invalid_digest() -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(None)  # type: ignore[arg-type]


def test_invalid_digest_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Digest.parse(f"md5:{'a' * 32}")


def test_digest_from_bytes_matches_hashlib() -> None:
    data = b"hello, imgpipe"
    assert Digest.from_bytes(data).encoded == hashlib.sha256(data).hexdigest()
    assert Digest.from_bytes(data, "sha512").encoded == hashlib.sha512(data).hexdigest()


def test_digester_incremental_equals_one_shot() -> None:
    dg = Digester()
    for chunk in (b"a", b"bc", b"", b"def"):
        dg.update(chunk)
    assert dg.digest() == Digest.from_bytes(b"abcdef")


def test_digest_short_and_order() -> None:
    d = Digest("sha256", "0123456789abcdef" * 4)
    assert d.short() == "0123456789ab"
    assert d.hex == d.encoded
    assert sorted([Digest("sha256", "b" * 64), Digest("sha256", "a" * 64)])[0].encoded[0] == "a"


# ------------------------------------------------------------------------ media types

# type, is_index, is_manifest, is_config, is_layer, is_encrypted, non_dist, compression, docker
MEDIA_TYPES = [
    ("application/vnd.oci.image.index.v1+json", 1, 0, 0, 0, 0, 0, "", 0),
    ("application/vnd.oci.image.manifest.v1+json", 0, 1, 0, 0, 0, 0, "", 0),
    ("application/vnd.oci.image.config.v1+json", 0, 0, 1, 0, 0, 0, "", 0),
    ("application/vnd.oci.image.layer.v1.tar", 0, 0, 0, 1, 0, 0, "", 0),
    ("application/vnd.oci.image.layer.v1.tar+gzip", 0, 0, 0, 1, 0, 0, "gzip", 0),
    ("application/vnd.oci.image.layer.v1.tar+zstd", 0, 0, 0, 1, 0, 0, "zstd", 0),
    ("application/vnd.oci.image.layer.v1.tar+encrypted", 0, 0, 0, 1, 1, 0, "", 0),
    ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", 0, 0, 0, 1, 1, 0, "gzip", 0),
    ("application/vnd.oci.image.layer.v1.tar+zstd+encrypted", 0, 0, 0, 1, 1, 0, "zstd", 0),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", 0, 0, 0, 1, 0, 1, "gzip", 0),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", 0, 0, 0, 1, 0, 1, "zstd", 0),
    ("application/vnd.docker.distribution.manifest.list.v2+json", 1, 0, 0, 0, 0, 0, "", 1),
    ("application/vnd.docker.distribution.manifest.v2+json", 0, 1, 0, 0, 0, 0, "", 1),
    ("application/vnd.docker.container.image.v1+json", 0, 0, 1, 0, 0, 0, "", 1),
    ("application/vnd.docker.image.rootfs.diff.tar", 0, 0, 0, 1, 0, 0, "", 1),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", 0, 0, 0, 1, 0, 0, "gzip", 1),
    ("application/vnd.docker.image.rootfs.diff.tar.zstd", 0, 0, 0, 1, 0, 0, "zstd", 1),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", 0, 0, 0, 1, 0, 1, "gzip", 1),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar", 0, 0, 0, 1, 0, 1, "", 1),
    ("application/vnd.oci.empty.v1+json", 0, 0, 0, 0, 0, 0, "", 0),
    ("application/vnd.example.sbom.v1+json", 0, 0, 0, 0, 0, 0, "", 0),  # unknown artifact
    ("application/vnd.cncf.helm.chart.content.v1.tar+gzip", 0, 0, 0, 0, 0, 0, "", 0),  # not ours
    ("application/vnd.oci.image.manifest.v1+json; charset=utf-8", 0, 1, 0, 0, 0, 0, "", 0),
    ("Application/VND.OCI.Image.Index.v1+JSON", 1, 0, 0, 0, 0, 0, "", 0),
]


@pytest.mark.parametrize("row", MEDIA_TYPES, ids=[r[0] for r in MEDIA_TYPES])
def test_mediatype_predicates_table(
    row: tuple[str, int, int, int, int, int, int, str, int],
) -> None:
    text, index, manifest, config, layer, enc, nondist, comp, docker = row
    mt = MediaType(text)
    assert mt.is_index() is bool(index)
    assert mt.is_manifest() is bool(manifest)
    assert mt.is_config() is bool(config)
    assert mt.is_layer() is bool(layer)
    assert mt.is_encrypted() is bool(enc)
    assert mt.is_non_distributable() is bool(nondist)
    assert mt.compression() == comp
    assert mt.is_docker() is bool(docker)
    assert not mt.is_schema1()
    # A media type is the string it was made from: unknown ones survive untouched.
    assert mt == text
    assert str(mt) == text
    assert json.loads(json.dumps({"m": mt}))["m"] == text
    assert hash(mt) == hash(text)


@pytest.mark.parametrize(
    "text",
    [
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ],
)
def test_mediatype_schema1(text: str) -> None:
    mt = MediaType(text)
    assert mt.is_schema1()
    assert not mt.is_manifest()
    assert not mt.is_index()


# ------------------------------------------------------------------------ descriptors


def _desc_json(**extra: object) -> dict[str, object]:
    d: dict[str, object] = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": f"sha256:{HEX64}",
        "size": 42,
    }
    d.update(extra)
    return d


def test_descriptor_round_trip_full() -> None:
    data = b'{"a":1}'
    obj = {
        "mediaType": "application/vnd.example.thing+json",
        "digest": str(Digest.from_bytes(data)),
        "size": len(data),
        "urls": ["https://example.com/blob"],
        "annotations": {"org.opencontainers.image.title": "x"},
        "data": base64.b64encode(data).decode(),
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        "artifactType": "application/vnd.example.sig",
    }
    d = Descriptor.from_json(obj)
    assert d.data == data
    assert d.platform == Platform("linux", "arm64", "v8")
    assert d.media_type == "application/vnd.example.thing+json"
    assert d.to_json() == obj
    assert Descriptor.from_json(d.to_json()) == d


def test_descriptor_minimal_omits_empty_fields() -> None:
    d = Descriptor.from_json(_desc_json())
    assert d.to_json() == _desc_json()
    assert d.urls == ()
    assert d.annotations == {}
    assert d.platform is None


@pytest.mark.parametrize(
    "obj",
    [
        _desc_json(size=-1),
        _desc_json(size=1.5),
        _desc_json(size=True),
        _desc_json(size="42"),
        _desc_json(digest="sha256:xyz"),
        _desc_json(digest=f"md5:{'a' * 32}"),
        _desc_json(digest=None),
        _desc_json(mediaType=""),
        _desc_json(mediaType=5),
        _desc_json(urls="https://x"),
        _desc_json(urls=[1]),
        _desc_json(annotations={"a": 1}),
        _desc_json(annotations=["a"]),
        _desc_json(platform={"os": "linux"}),
        _desc_json(artifactType=3),
        _desc_json(data="!!!not base64"),
        [],
        "sha256:x",
    ],
)
def test_descriptor_invalid_table(obj: object) -> None:
    with pytest.raises(MalformedDocument):
        Descriptor.from_json(obj)


def test_descriptor_embedded_data_must_match() -> None:
    with pytest.raises(DigestMismatch):
        Descriptor.from_json(_desc_json(data=base64.b64encode(b"x" * 42).decode()))


def test_descriptor_negative_size_refused_on_construction() -> None:
    with pytest.raises(MalformedDocument):
        Descriptor(MediaType("a/b"), Digest("sha256", HEX64), -5)


_ann = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=4)


@given(
    size=st.integers(min_value=0, max_value=2**53),
    hexd=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    mt=st.text(min_size=1, max_size=60),
    annotations=_ann,
    urls=st.lists(st.text(max_size=30), max_size=3),
)
def test_descriptor_round_trip_property(
    size: int, hexd: str, mt: str, annotations: dict[str, str], urls: list[str]
) -> None:
    d = Descriptor(
        MediaType(mt), Digest("sha256", hexd), size, urls=tuple(urls), annotations=annotations
    )
    back = Descriptor.from_json(json.loads(json.dumps(d.to_json())))
    assert back == d


# -------------------------------------------------------------------------- chain IDs

# The diff IDs of the example in the OCI image spec's config.md.
SPEC_DIFF_IDS = [
    Digest.parse("sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1"),
    Digest.parse("sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"),
]
# sha256 of "<first> <second>" computed once (and re-derived with hashlib below).
SPEC_CHAIN_ID = Digest.parse(
    "sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f"
)


def _by_definition(diff_ids: list[str]) -> list[str]:
    # Written from the spec's definition, independently of imgpipe's code.
    out = [diff_ids[0]]
    for d in diff_ids[1:]:
        out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def test_chain_id_spec_example() -> None:
    assert chain_ids(SPEC_DIFF_IDS) == [SPEC_DIFF_IDS[0], SPEC_CHAIN_ID]
    assert chain_id(SPEC_DIFF_IDS) == SPEC_CHAIN_ID
    assert [str(d) for d in chain_ids(SPEC_DIFF_IDS)] == _by_definition(
        [str(d) for d in SPEC_DIFF_IDS]
    )


def test_chain_id_single_layer_is_its_diff_id() -> None:
    assert chain_id(SPEC_DIFF_IDS[:1]) == SPEC_DIFF_IDS[0]


def test_chain_ids_three_layers_expand_the_definition() -> None:
    a, b, c = (Digest.from_bytes(x) for x in (b"A", b"B", b"C"))
    ab = hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = hashlib.sha256(f"sha256:{ab} {c}".encode()).hexdigest()
    assert [str(x) for x in chain_ids([a, b, c])] == [str(a), f"sha256:{ab}", f"sha256:{abc}"]
    # Order matters: the chain of C alone is not the chain of A|B|C.
    assert chain_id([c]) != chain_id([a, b, c])
    assert chain_id([b, a]) != chain_id([a, b])


def test_chain_ids_empty() -> None:
    assert chain_ids([]) == []
    with pytest.raises(InvalidArgument):
        chain_id([])


def test_chain_ids_refuse_strings() -> None:
    with pytest.raises(InvalidArgument):
        chain_ids([f"sha256:{HEX64}"])  # type: ignore[list-item]


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=6))
def test_chain_ids_property(blobs: list[bytes]) -> None:
    ids = [Digest.from_bytes(b) for b in blobs]
    assert [str(x) for x in chain_ids(ids)] == _by_definition([str(x) for x in ids])


# ------------------------------------------------------------------ public namespace


def test_public_namespace_is_pinned() -> None:
    # Every name in __all__ exists, and every public submodule name is re-exported.
    for name in formats.__all__:
        assert hasattr(formats, name), name
    assert len(set(formats.__all__)) == len(formats.__all__)
    from imgpipe.formats import (
        chainid,
        config,
        descriptor,
        digest,
        errors,
        layout,
        manifest,
        mediatype,
        platform,
        reference,
    )

    for mod in (
        chainid, config, descriptor, digest, errors, layout, manifest, mediatype, platform,
        reference,
    ):  # fmt: skip
        missing = set(mod.__all__) - set(formats.__all__)
        assert not missing, f"{mod.__name__} exports {missing} not re-exported by formats"


def test_compressed_variants_are_the_known_layer_types() -> None:
    gzip = {t: t.compressed("gzip") for t in m.LAYER_TYPES if t.compressed("gzip")}
    zstd = {t: t.compressed("zstd") for t in m.LAYER_TYPES if t.compressed("zstd")}
    assert gzip == {
        m.OCI_LAYER: m.OCI_LAYER_GZIP,
        m.OCI_LAYER_NONDIST: m.OCI_LAYER_NONDIST_GZIP,
        m.DOCKER_LAYER: m.DOCKER_LAYER_GZIP,
        m.DOCKER_FOREIGN_LAYER: m.DOCKER_FOREIGN_LAYER_GZIP,
    }
    assert zstd == {
        m.OCI_LAYER: m.OCI_LAYER_ZSTD,
        m.OCI_LAYER_NONDIST: m.OCI_LAYER_NONDIST_ZSTD,
        m.DOCKER_LAYER: m.DOCKER_LAYER_ZSTD,
    }
    # parameters do not matter; an unknown suffix, an encrypted or a config type has none
    assert MediaType(m.OCI_LAYER + "; x=y").compressed("gzip") == m.OCI_LAYER_GZIP
    for other in (m.OCI_LAYER + "+foo", m.OCI_LAYER + "+encrypted", m.OCI_CONFIG):
        assert MediaType(other).compressed("zstd") is None


def test_lazy_exports_import_on_first_use_and_keep_the_value() -> None:
    """The PEP 562 hook the packages share: a name loads its submodule once, then lives
    in the package's namespace; a name the table lacks is an AttributeError."""
    from imgpipe import processors

    registry_type = processors.ProcessorRegistry
    assert vars(processors)["ProcessorRegistry"] is registry_type
    assert registry_type.__module__ == "imgpipe.processors.registry"
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        _ = processors.nosuch  # type: ignore[attr-defined]
