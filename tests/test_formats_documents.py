"""Manifests, indexes, image configs and the OCI layout: valid and hostile documents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgpipe.formats import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_DOCUMENT_SIZE,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ContainerConfig,
    Descriptor,
    Digest,
    History,
    Index,
    InvalidArgument,
    MalformedDocument,
    Manifest,
    MediaType,
    Platform,
    ResourceLimit,
    Unsupported,
    blob_path,
    find_refs,
    layout_file_bytes,
    parse_config,
    parse_document,
    parse_index,
    parse_layout_file,
    parse_manifest,
)

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64


def desc(mt: str, hexd: str = H1, size: Any = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": mt, "digest": f"sha256:{hexd}", "size": size, **extra}


def manifest_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, H1, 100),
        "layers": [desc(OCI_LAYER_GZIP, H2, 200), desc(OCI_LAYER_ZSTD, H3, 300)],
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def index_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            desc(OCI_MANIFEST, H1, 500, platform={"architecture": "amd64", "os": "linux"}),
            desc(
                OCI_MANIFEST,
                H2,
                501,
                platform={"architecture": "arm64", "os": "linux", "variant": "v8"},
            ),
        ],
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def raw(doc: Any, **kw: Any) -> bytes:
    return json.dumps(doc, **kw).encode()


# ------------------------------------------------------------------- valid manifests


def test_parse_oci_manifest_keeps_raw_and_digests_it() -> None:
    # Pretty-printed on purpose: the digest is over these bytes, not a re-serialisation.
    data = raw(manifest_doc(annotations={"a": "b"}), indent=3)
    m = parse_manifest(data, OCI_MANIFEST)
    assert m.raw == data
    assert m.digest == Digest.from_bytes(data)
    assert m.media_type == OCI_MANIFEST
    assert m.config.media_type == OCI_CONFIG
    assert [d.size for d in m.layers] == [200, 300]
    assert m.annotations == {"a": "b"}
    assert m.subject is None
    assert m.artifact_type == ""
    assert m.children() == (m.config, *m.layers)
    assert m.descriptor() == Descriptor(OCI_MANIFEST, Digest.from_bytes(data), len(data))
    assert not m.is_docker()


def test_parse_docker_manifest() -> None:
    doc = manifest_doc(
        mediaType=DOCKER_MANIFEST,
        config=desc(DOCKER_CONFIG, H1, 100),
        layers=[desc(DOCKER_LAYER_GZIP, H2, 7)],
    )
    m = parse_manifest(raw(doc), DOCKER_MANIFEST)
    assert m.media_type == DOCKER_MANIFEST
    assert m.is_docker()
    assert m.layers[0].media_type.compression() == "gzip"


def test_manifest_without_media_type_field_takes_the_served_type() -> None:
    doc = manifest_doc(mediaType=...)
    assert parse_manifest(raw(doc), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST
    assert parse_manifest(raw(doc)).media_type == OCI_MANIFEST  # OCI is the default


def test_artifact_manifest_passes_unknown_types_through() -> None:
    doc = manifest_doc(
        artifactType="application/vnd.example.sbom.v1",
        config=desc(OCI_EMPTY, H1, 2),
        layers=[desc("application/vnd.example.sbom.v1+json", H2, 99, urls=["https://x/y"])],
        subject=desc(OCI_MANIFEST, H3, 1234),
    )
    m = parse_manifest(raw(doc))
    assert m.artifact_type == "application/vnd.example.sbom.v1"
    assert m.layers[0].media_type == "application/vnd.example.sbom.v1+json"
    assert m.layers[0].urls == ("https://x/y",)
    assert m.subject is not None and m.subject.digest.encoded == H3


@pytest.mark.parametrize(
    "served",
    [
        None,
        "",
        "application/json",
        "text/plain",
        "application/octet-stream",
        "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
        "APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON",
    ],
)
def test_served_type_generic_or_equivalent_is_accepted(served: str | None) -> None:
    assert parse_manifest(raw(manifest_doc()), served).media_type == OCI_MANIFEST


def test_parse_index_and_platform_selection() -> None:
    doc = index_doc()
    doc["manifests"].append(desc(OCI_MANIFEST, H3, 502))  # no platform: kept, last
    doc["manifests"].append(
        desc(
            OCI_MANIFEST, H3, 503, platform={"architecture": "arm", "os": "linux", "variant": "v7"}
        )
    )
    ix = parse_index(raw(doc))
    assert ix.media_type == OCI_INDEX
    assert ix.children() == ix.manifests
    assert len(ix.manifests) == 4
    assert ix.manifests[1].platform == Platform("linux", "arm64", "v8")
    arm64 = ix.for_platform(Platform.parse("linux/arm64"))
    assert [d.size for d in arm64] == [501, 503, 502]  # exact, then arm/v7, then no platform
    assert [d.size for d in ix.for_platform(Platform.parse("linux/amd64"))] == [500, 502]
    assert [d.size for d in ix.for_platform(Platform.parse("linux/arm64"), strict=True)] == [
        501,
        502,
    ]
    assert [d.size for d in ix.for_platform(Platform.parse("windows/amd64"))] == [502]


def test_parse_docker_manifest_list() -> None:
    ix = parse_index(raw(index_doc(mediaType=DOCKER_MANIFEST_LIST)), DOCKER_MANIFEST_LIST)
    assert ix.media_type == DOCKER_MANIFEST_LIST
    assert ix.is_docker()


@pytest.mark.parametrize(
    ("doc", "served", "kind"),
    [
        (manifest_doc(), None, Manifest),
        (manifest_doc(), OCI_MANIFEST, Manifest),
        (manifest_doc(mediaType=...), None, Manifest),  # by shape
        (index_doc(), None, Index),
        (index_doc(), OCI_INDEX, Index),
        (index_doc(mediaType=...), None, Index),  # by shape
        (index_doc(mediaType=...), DOCKER_MANIFEST_LIST, Index),
    ],
)
def test_parse_document_dispatch(doc: dict[str, Any], served: str | None, kind: type) -> None:
    assert isinstance(parse_document(raw(doc), served), kind)


def test_bytearray_and_memoryview_are_accepted_as_bytes() -> None:
    data = raw(manifest_doc())
    assert parse_manifest(bytearray(data)).raw == data
    assert parse_document(memoryview(data)).raw == data
    with pytest.raises(InvalidArgument):
        parse_manifest(data.decode())  # type: ignore[arg-type]


def test_exactly_max_size_is_accepted_and_one_more_refused() -> None:
    base = raw(manifest_doc(annotations={"pad": ""}))
    pad = MAX_DOCUMENT_SIZE - len(base)
    data = raw(manifest_doc(annotations={"pad": "x" * pad}))
    assert len(data) == MAX_DOCUMENT_SIZE
    assert parse_manifest(data).digest == Digest.from_bytes(data)
    with pytest.raises(ResourceLimit):
        parse_manifest(data + b" ")


# ----------------------------------------------------------------- invalid manifests

SCHEMA1 = {
    "schemaVersion": 1,
    "name": "library/alpine",
    "tag": "latest",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": f"sha256:{H1}"}],
    "history": [{"v1Compatibility": "{}"}],
}


@pytest.mark.parametrize(
    ("data", "served"),
    [
        (raw(SCHEMA1), None),
        (raw(SCHEMA1), "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        (raw(SCHEMA1), "text/plain"),
        (raw({**SCHEMA1, "schemaVersion": 2}), None),  # fsLayers alone gives it away
        (raw(manifest_doc(schemaVersion=1)), None),
        (raw(manifest_doc()), "application/vnd.docker.distribution.manifest.v1+json"),
        (raw(manifest_doc(mediaType="application/vnd.docker.distribution.manifest.v1+json")), None),
    ],
)
def test_schema1_is_unsupported_with_advice(data: bytes, served: str | None) -> None:
    for parse in (parse_manifest, parse_document, parse_index):
        with pytest.raises(Unsupported, match=r"schema 1.*re-push.*schema 2 or OCI"):
            parse(data, served)


def _bad(doc: Any) -> bytes:
    return raw(doc)


MALFORMED_MANIFESTS: list[tuple[str, bytes, str | None]] = [
    ("not json", b"{not json", None),
    ("empty", b"", None),
    ("array", b"[]", None),
    ("string", b'"manifest"', None),
    ("not utf-8", b'{"schemaVersion":2,"x":"\xff"}', None),
    ("utf-8 bom", b"\xef\xbb\xbf" + raw(manifest_doc()), None),
    ("NaN", b'{"schemaVersion":NaN}', None),
    ("duplicate key", b'{"schemaVersion":2,"schemaVersion":2,"config":{},"layers":[]}', None),
    ("deep nesting", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    ("no schemaVersion", _bad(manifest_doc(schemaVersion=...)), None),
    ("schemaVersion 3", _bad(manifest_doc(schemaVersion=3)), None),
    ("schemaVersion str", _bad(manifest_doc(schemaVersion="2")), None),
    ("schemaVersion true", _bad(manifest_doc(schemaVersion=True)), None),
    ("schemaVersion 2.0", _bad(manifest_doc(schemaVersion=2.5)), None),
    ("mediaType int", _bad(manifest_doc(mediaType=5)), None),
    ("no config", _bad(manifest_doc(config=...)), OCI_MANIFEST),
    ("config null", _bad(manifest_doc(config=None)), OCI_MANIFEST),
    ("config list", _bad(manifest_doc(config=[])), None),
    ("no layers", _bad(manifest_doc(layers=...)), None),
    ("layers null", _bad(manifest_doc(layers=None)), OCI_MANIFEST),
    ("layers object", _bad(manifest_doc(layers={})), None),
    ("layer not object", _bad(manifest_doc(layers=["x"])), None),
    ("bad digest", _bad(manifest_doc(layers=[desc(OCI_LAYER_GZIP, "z" * 64)])), None),
    ("short digest", _bad(manifest_doc(config=desc(OCI_CONFIG, "a" * 63))), None),
    ("uppercase digest", _bad(manifest_doc(config=desc(OCI_CONFIG, "A" * 64))), None),
    ("negative size", _bad(manifest_doc(layers=[desc(OCI_LAYER_GZIP, H2, -1)])), None),
    ("float size", _bad(manifest_doc(layers=[desc(OCI_LAYER_GZIP, H2, 1.0)])), None),
    ("annotations list", _bad(manifest_doc(annotations=["a"])), None),
    ("annotation int", _bad(manifest_doc(annotations={"a": 1})), None),
    ("artifactType int", _bad(manifest_doc(artifactType=1)), None),
    ("subject string", _bad(manifest_doc(subject="sha256:" + H1)), None),
    ("neither kind", _bad({"schemaVersion": 2}), None),
    # CVE-2021-41190: the shape contradicts the media type.
    ("manifest type with manifests", _bad(manifest_doc(manifests=[])), None),
    ("manifest served, has manifests", _bad(index_doc(mediaType=...)), OCI_MANIFEST),
    ("index type with layers", _bad(index_doc(layers=[])), None),
    ("index type with config", _bad(index_doc(config=desc(OCI_CONFIG))), None),
    ("index served, has config", _bad(manifest_doc(mediaType=...)), OCI_INDEX),
    (
        "both shapes, no type",
        _bad({**index_doc(mediaType=...), "config": desc(OCI_CONFIG), "layers": []}),
        None,
    ),
    # The served type and the document's own type must agree.
    ("served index, says manifest", _bad(manifest_doc()), OCI_INDEX),
    ("served docker, says oci", _bad(manifest_doc()), DOCKER_MANIFEST),
    ("served oci, says docker", _bad(manifest_doc(mediaType=DOCKER_MANIFEST)), OCI_MANIFEST),
]


@pytest.mark.parametrize(
    ("data", "served"),
    [pytest.param(d, s, id=name) for name, d, s in MALFORMED_MANIFESTS],
)
def test_malformed_manifests(data: bytes, served: str | None) -> None:
    with pytest.raises(MalformedDocument):
        parse_manifest(data, served)
    with pytest.raises(MalformedDocument):
        parse_document(data, served)


MALFORMED_INDEXES: list[tuple[str, bytes, str | None]] = [
    ("no manifests", _bad(index_doc(manifests=...)), OCI_INDEX),
    ("manifests null", _bad(index_doc(manifests=None)), OCI_INDEX),
    ("manifests object", _bad(index_doc(manifests={})), None),
    ("entry bad digest", _bad(index_doc(manifests=[desc(OCI_MANIFEST, "x")])), None),
    ("entry negative size", _bad(index_doc(manifests=[desc(OCI_MANIFEST, H1, -3)])), None),
    ("entry bad platform", _bad(index_doc(manifests=[desc(OCI_MANIFEST, platform=1)])), None),
    ("schemaVersion 1", _bad(index_doc(schemaVersion=3)), None),
    ("is a manifest", _bad(manifest_doc()), None),
    ("index type with layers", _bad(index_doc(layers=[desc(OCI_LAYER_GZIP)])), None),
]


@pytest.mark.parametrize(
    ("data", "served"),
    [pytest.param(d, s, id=name) for name, d, s in MALFORMED_INDEXES],
)
def test_malformed_indexes(data: bytes, served: str | None) -> None:
    with pytest.raises(MalformedDocument):
        parse_index(data, served)


def test_parse_index_refuses_a_manifest_and_vice_versa() -> None:
    with pytest.raises(MalformedDocument, match="expected an image index"):
        parse_index(raw(manifest_doc()))
    with pytest.raises(MalformedDocument, match="expected an image manifest"):
        parse_manifest(raw(index_doc()))


@pytest.mark.parametrize(
    "served",
    ["application/vnd.oci.image.config.v1+json", "application/vnd.example.thing", "image/png"],
)
def test_non_manifest_served_type_is_unsupported(served: str) -> None:
    with pytest.raises(Unsupported):
        parse_document(raw(manifest_doc(mediaType=...)), served)


def test_unknown_document_media_type_is_unsupported() -> None:
    # The deprecated OCI artifact manifest: neither an image manifest nor an index.
    doc = {"mediaType": "application/vnd.oci.artifact.manifest.v1+json", "schemaVersion": 2}
    with pytest.raises(Unsupported):
        parse_document(raw(doc))


# ------------------------------------------------------------------- building documents


def test_manifest_build_is_canonical_compact_json() -> None:
    cfg = Descriptor.from_json(desc(OCI_CONFIG, H1, 100))
    layer = Descriptor.from_json(desc(OCI_LAYER_GZIP, H2, 200))
    subject = Descriptor.from_json(desc(OCI_MANIFEST, H3, 5))
    m = Manifest.build(
        cfg, [layer], annotations={"k": "v"}, subject=subject, artifact_type="application/x"
    )
    obj = json.loads(m.raw)
    assert list(obj) == [
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "subject",
        "annotations",
    ]
    assert b" " not in m.raw and b"\n" not in m.raw
    assert m.raw == json.dumps(obj, separators=(",", ":")).encode()
    assert m.digest == Digest.from_bytes(m.raw)
    # Same inputs, same bytes.
    assert (
        Manifest.build(
            cfg, [layer], annotations={"k": "v"}, subject=subject, artifact_type="application/x"
        ).raw
        == m.raw
    )
    plain = Manifest.build(cfg, [])
    assert list(json.loads(plain.raw)) == ["schemaVersion", "mediaType", "config", "layers"]
    assert hash(plain) == hash(plain.digest)


def test_manifest_build_docker() -> None:
    cfg = Descriptor.from_json(desc(DOCKER_CONFIG, H1, 100))
    m = Manifest.build(cfg, [], media_type=DOCKER_MANIFEST)
    assert json.loads(m.raw)["mediaType"] == DOCKER_MANIFEST
    assert parse_manifest(m.raw, DOCKER_MANIFEST) == m


def test_build_refuses_wrong_media_types() -> None:
    cfg = Descriptor.from_json(desc(OCI_CONFIG))
    with pytest.raises(InvalidArgument):
        Manifest.build(cfg, [], media_type=OCI_INDEX)
    with pytest.raises(InvalidArgument):
        Index.build([], media_type=OCI_MANIFEST)


def test_index_build_round_trip() -> None:
    entries = [Descriptor.from_json(d) for d in index_doc()["manifests"]]
    ix = Index.build(entries, annotations={"x": "y"}, media_type=DOCKER_MANIFEST_LIST)
    assert list(json.loads(ix.raw)) == ["schemaVersion", "mediaType", "manifests", "annotations"]
    back = parse_index(ix.raw)
    assert back == ix
    assert back.manifests == tuple(entries)
    assert ix.descriptor().size == len(ix.raw)


_mt = st.sampled_from(
    [OCI_LAYER_GZIP, OCI_LAYER_ZSTD, "application/vnd.example+json", OCI_EMPTY, DOCKER_LAYER_GZIP]
)
_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_text = st.text(max_size=12)
_descs = st.builds(
    lambda mt, h, size, ann: Descriptor(MediaType(mt), Digest("sha256", h), size, annotations=ann),
    _mt,
    _hex,
    st.integers(min_value=0, max_value=2**40),
    st.dictionaries(_text, _text, max_size=2),
)


@settings(max_examples=60)
@given(
    config=_descs,
    layers=st.lists(_descs, max_size=4),
    annotations=st.dictionaries(_text, _text, max_size=3),
    subject=st.none() | _descs,
    artifact_type=st.sampled_from(["", "application/vnd.example.sig"]),
    docker=st.booleans(),
)
def test_manifest_build_parse_round_trip(
    config: Descriptor,
    layers: list[Descriptor],
    annotations: dict[str, str],
    subject: Descriptor | None,
    *,
    artifact_type: str,
    docker: bool,
) -> None:
    mt = DOCKER_MANIFEST if docker else OCI_MANIFEST
    m = Manifest.build(
        config,
        layers,
        media_type=mt,
        annotations=annotations,
        subject=subject,
        artifact_type=artifact_type,
    )
    back = parse_manifest(m.raw, mt)
    assert back.raw == m.raw  # bytes preserved
    assert back.digest == Digest.from_bytes(m.raw)
    assert back.media_type == mt
    assert back.config == config
    assert back.layers == tuple(layers)
    assert back.annotations == annotations
    assert back.subject == subject
    assert back.artifact_type == artifact_type
    assert back == m
    assert isinstance(parse_document(m.raw), Manifest)


@settings(max_examples=40)
@given(entries=st.lists(_descs, max_size=5), annotations=st.dictionaries(_text, _text, max_size=3))
def test_index_build_parse_round_trip(
    entries: list[Descriptor], annotations: dict[str, str]
) -> None:
    ix = Index.build(entries, annotations=annotations)
    back = parse_document(ix.raw)
    assert isinstance(back, Index)
    assert back.manifests == tuple(entries)
    assert back.annotations == annotations
    assert back.raw == ix.raw


# --------------------------------------------------------------------------- configs


def config_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "created": "2024-01-02T03:04:05Z",
        "author": "someone",
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/usr/bin", "A=b=c"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/srv",
            "Labels": {"org.example": "1"},
            "StopSignal": "SIGTERM",
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Volumes": {"/data": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{H1}", f"sha256:{H2}"]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs /", "comment": "base"},
            {"created_by": "ENV A=b", "empty_layer": True},
            {"created_by": "RUN make", "author": "me"},
        ],
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def test_parse_config_full() -> None:
    data = raw(config_doc(), indent=2)
    c = parse_config(data)
    assert c.raw == data
    assert c.digest == Digest.from_bytes(data)
    assert (c.architecture, c.os, c.variant, c.created, c.author) == (
        "arm64",
        "linux",
        "v8",
        "2024-01-02T03:04:05Z",
        "someone",
    )
    assert c.platform() == Platform("linux", "arm64", "v8")
    assert c.diff_ids == (Digest("sha256", H1), Digest("sha256", H2))
    assert c.config == ContainerConfig(
        user="1000:1000",
        env=("PATH=/usr/bin", "A=b=c"),
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        working_dir="/srv",
        labels={"org.example": "1"},
        stop_signal="SIGTERM",
        exposed_ports=("80/tcp", "53/udp"),
        volumes=("/data",),
    )
    assert c.history == (
        History(created="2024-01-01T00:00:00Z", created_by="ADD rootfs /", comment="base"),
        History(created_by="ENV A=b", empty_layer=True),
        History(created_by="RUN make", author="me"),
    )


def test_parse_config_minimal_and_windows() -> None:
    doc = {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.1",
        "os.features": ["win32k"],
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    c = parse_config(raw(doc))
    assert c.config == ContainerConfig()
    assert c.config.entrypoint is None and c.config.cmd is None
    assert c.history == () and c.diff_ids == ()
    assert c.platform() == Platform("windows", "amd64", "", "10.0.17763.1", ("win32k",))


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "want_ep", "want_cmd"),
    [
        (..., ..., None, None),  # absent
        (None, None, None, None),  # null is absent (Docker writes null)
        ([], [], (), ()),  # explicitly empty is kept apart
        (["/a"], ..., ("/a",), None),
        ("/bin/sh -c x", "run", ("/bin/sh -c x",), ("run",)),  # Docker's lone-string form
    ],
)
def test_entrypoint_and_cmd_absent_vs_empty(
    entrypoint: Any, cmd: Any, want_ep: Any, want_cmd: Any
) -> None:
    cc: dict[str, Any] = {}
    if entrypoint is not ...:
        cc["Entrypoint"] = entrypoint
    if cmd is not ...:
        cc["Cmd"] = cmd
    c = parse_config(raw(config_doc(config=cc)))
    assert c.config.entrypoint == want_ep
    assert c.config.cmd == want_cmd


def test_docker_config_with_nulls_and_extra_fields() -> None:
    cc = {"Env": None, "Labels": None, "Volumes": None, "ExposedPorts": None, "User": ""}
    doc = config_doc(
        config=cc, container_config={"Hostname": "x"}, docker_version="24.0", config_extra=1
    )
    c = parse_config(raw(doc))
    assert c.config == ContainerConfig()


MALFORMED_CONFIGS = [
    ("not json", b"nope"),
    ("array", b"[1]"),
    ("no architecture", raw(config_doc(architecture=...))),
    ("no os", raw(config_doc(os=...))),
    ("os int", raw(config_doc(os=1))),
    ("empty architecture", raw(config_doc(architecture=""))),
    ("no rootfs", raw(config_doc(rootfs=...))),
    ("rootfs list", raw(config_doc(rootfs=[]))),
    ("rootfs type", raw(config_doc(rootfs={"type": "tar", "diff_ids": []}))),
    ("no diff_ids", raw(config_doc(rootfs={"type": "layers"}))),
    ("diff_ids string", raw(config_doc(rootfs={"type": "layers", "diff_ids": "x"}))),
    ("bad diff_id", raw(config_doc(rootfs={"type": "layers", "diff_ids": ["sha256:1"]}))),
    ("diff_id int", raw(config_doc(rootfs={"type": "layers", "diff_ids": [1]}))),
    ("config list", raw(config_doc(config=[]))),
    ("Env string", raw(config_doc(config={"Env": "A=b"}))),
    ("Cmd ints", raw(config_doc(config={"Cmd": [1]}))),
    ("User int", raw(config_doc(config={"User": 0}))),
    ("Labels ints", raw(config_doc(config={"Labels": {"a": 1}}))),
    ("ExposedPorts list", raw(config_doc(config={"ExposedPorts": ["80"]}))),
    ("history object", raw(config_doc(history={}))),
    ("history entry", raw(config_doc(history=["x"]))),
    ("empty_layer string", raw(config_doc(history=[{"empty_layer": "true"}]))),
    ("created int", raw(config_doc(created=5))),
    ("variant int", raw(config_doc(variant=8))),
    ("os.features string", raw(config_doc(**{"os.features": "x"}))),
    ("os.features ints", raw(config_doc(**{"os.features": [1]}))),
    ("duplicate key", b'{"os":"linux","os":"windows"}'),
]


@pytest.mark.parametrize(("data"), [pytest.param(d, id=n) for n, d in MALFORMED_CONFIGS])
def test_malformed_configs(data: bytes) -> None:
    with pytest.raises(MalformedDocument):
        parse_config(data)


def test_oversize_config() -> None:
    big = raw(config_doc(author="x" * MAX_DOCUMENT_SIZE))
    with pytest.raises(ResourceLimit):
        parse_config(big)


# ---------------------------------------------------------------------------- layout


def test_layout_file_bytes_and_parse() -> None:
    assert layout_file_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    parse_layout_file(layout_file_bytes())
    parse_layout_file(b'{ "imageLayoutVersion": "1.0.0", "extra": 1 }')


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"imageLayoutVersion":"2.0.0"}', Unsupported),
        (b'{"imageLayoutVersion":"1.0"}', Unsupported),
        (b'{"imageLayoutVersion":1}', MalformedDocument),
        (b"{}", MalformedDocument),
        (b"[]", MalformedDocument),
        (b"garbage", MalformedDocument),
        (b'{"imageLayoutVersion":"1.0.0","x":"' + b"a" * 70_000 + b'"}', ResourceLimit),
    ],
)
def test_parse_layout_file_invalid(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_layout_file(data)


def test_blob_path() -> None:
    assert blob_path(Digest("sha256", H1)) == f"blobs/sha256/{H1}"
    assert blob_path(Digest("sha512", "a" * 128)) == f"blobs/sha512/{'a' * 128}"
    with pytest.raises(InvalidArgument):
        blob_path(f"sha256:{H1}")  # type: ignore[arg-type]


def test_find_refs() -> None:
    entries = [
        desc(OCI_MANIFEST, H1, 1, annotations={ANNOTATION_REF_NAME: "v1"}),
        desc(
            OCI_MANIFEST,
            H2,
            2,
            annotations={
                ANNOTATION_REF_NAME: "latest",
                ANNOTATION_IMAGE_NAME: "docker.io/library/alpine:latest",
            },
        ),
        desc(OCI_MANIFEST, H3, 3),
        desc(OCI_MANIFEST, H3, 4, annotations={ANNOTATION_REF_NAME: "v1"}),
    ]
    ix = parse_index(raw(index_doc(manifests=entries)))
    assert [d.size for d in find_refs(ix, "v1")] == [1, 4]
    assert [d.size for d in find_refs(ix, "latest")] == [2]
    assert [d.size for d in find_refs(ix, "docker.io/library/alpine:latest")] == [2]
    assert find_refs(ix, "nope") == []
    assert [d.size for d in find_refs(ix, "")] == [1, 2, 3, 4]
