"""The value types of formats as records: what each kept of the frozen dataclass it was
(constructor, equality, hash, repr, immutability, pickling, validation), its typed
``replace``, and that importing them does not load ``dataclasses``."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from typing import Any

import pytest

from imgpipe.formats import InvalidReference, MalformedDocument
from imgpipe.formats._record import FrozenError
from imgpipe.formats.config import ContainerConfig, History, ImageConfig, parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.manifest import Index, Manifest
from imgpipe.formats.mediatype import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, MediaType
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import Reference, TransportRef, parse_reference

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")
CONFIG_JSON = (
    b'{"architecture":"amd64","os":"linux","os.features":["f"],"config":{"Env":["A=1"]},'
    b'"rootfs":{"type":"layers","diff_ids":["' + str(D1).encode() + b'"]}}'
)


def _layer(size: int = 3, **kw: Any) -> Descriptor:
    return Descriptor(OCI_LAYER_GZIP, D1, size, **kw)


def _manifest(annotations: dict[str, str] | None = None) -> Manifest:
    config = Descriptor(OCI_CONFIG, D2, 10)
    return Manifest.build(config, [_layer()], annotations=annotations)


def _index(annotations: dict[str, str] | None = None) -> Index:
    return Index.build([_manifest().descriptor()], annotations=annotations)


#: For each record class: two equal instances (built apart) and one that differs.
CASES: dict[str, tuple[Any, Any, Any]] = {
    "Descriptor": (_layer(), _layer(), _layer(4)),
    "Reference": (
        parse_reference("alpine:3"),
        Reference("docker.io", "library/alpine", "3"),
        parse_reference("alpine:4"),
    ),
    "TransportRef": (
        TransportRef("oci", path="dir", tag="a"),
        TransportRef("oci", "dir", "a"),
        TransportRef("oci", path="dir", tag="b"),
    ),
    "Manifest": (_manifest(), _manifest(), _manifest({"k": "v"})),
    "Index": (_index(), _index(), _index({"k": "v"})),
    "ImageConfig": (
        parse_config(CONFIG_JSON),
        parse_config(CONFIG_JSON),
        parse_config(CONFIG_JSON.replace(b"amd64", b"arm64")),
    ),
}
IDS = list(CASES)


@pytest.mark.parametrize("name", IDS)
def test_equal_when_every_field_is(name: str) -> None:
    a, b, c = CASES[name]
    assert a is not b
    assert a == b
    assert (a != b) is False
    assert a != c
    assert a != object()
    assert a.__eq__(object()) is NotImplemented
    assert a.__eq__(c) is False


def test_a_record_equals_only_its_own_class() -> None:
    # Manifest and Index share _Document's fields but are never equal to each other.
    m = _manifest()
    assert m.__eq__(_index()) is NotImplemented
    assert Reference("docker.io", "a/b") != TransportRef("oci", "a")


@pytest.mark.parametrize("name", ["Reference", "TransportRef"])
def test_references_hash_by_their_fields(name: str) -> None:
    a, b, c = CASES[name]
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2


@pytest.mark.parametrize("name", ["Manifest", "Index", "ImageConfig"])
def test_documents_hash_by_their_digest(name: str) -> None:
    a, b, c = CASES[name]
    assert hash(a) == hash(b) == hash(a.digest)
    assert hash(c) == hash(c.digest)
    assert {a: 1}[b] == 1


def test_a_descriptor_with_a_dict_of_annotations_is_unhashable_as_before() -> None:
    # The frozen dataclass hashed every field, and a dict has no hash; nothing relies on
    # hashing descriptors (sets and maps are keyed by digest).
    with pytest.raises(TypeError):
        hash(_layer())


@pytest.mark.parametrize("name", IDS)
def test_fields_cannot_be_assigned_or_deleted(name: str) -> None:
    a = CASES[name][0]
    field = a._fields[0]
    before = getattr(a, field)
    with pytest.raises(AttributeError, match="cannot assign"):
        setattr(a, field, before)
    with pytest.raises(FrozenError):
        a.not_a_field = 1
    with pytest.raises(AttributeError, match="cannot delete"):
        delattr(a, field)
    assert getattr(a, field) == before
    assert issubclass(FrozenError, AttributeError)


def test_assignment_statements_raise() -> None:
    d = _layer()
    with pytest.raises(AttributeError):
        d.size = 4
    with pytest.raises(AttributeError):
        del d.size
    assert d.size == 3


@pytest.mark.parametrize("name", ["Descriptor", "Reference", "TransportRef"])
def test_slotted_records_have_no_instance_dict(name: str) -> None:
    assert not hasattr(CASES[name][0], "__dict__")


def test_repr_is_the_dataclass_style() -> None:
    ref = parse_reference("alpine@" + str(D1))
    assert repr(ref) == (
        f"Reference(domain='docker.io', path='library/alpine', tag='', digest={D1!r})"
    )
    assert repr(TransportRef("oci", "dir")) == (
        "TransportRef(transport='oci', path='dir', tag='', reference=None)"
    )
    assert repr(_layer(annotations={"a": "b"})) == (
        f"Descriptor(media_type={OCI_LAYER_GZIP!r}, digest={D1!r}, size=3, urls=(), "
        "annotations={'a': 'b'}, platform=None, artifact_type='', data=None)"
    )


def test_document_reprs_leave_out_raw_and_annotations() -> None:
    m = _manifest({"secret-looking": "x"})
    text = repr(m)
    assert text.startswith(f"Manifest(media_type={OCI_MANIFEST!r}, subject=None, ")
    assert f"digest={m.digest!r}, config={m.config!r}, layers={m.layers!r})" in text
    assert "raw=" not in text
    assert "annotations=" not in text.replace(repr(m.config), "").replace(repr(m.layers), "")
    idx = _index()
    assert repr(idx).endswith(f"digest={idx.digest!r}, manifests={idx.manifests!r})")
    config = CASES["ImageConfig"][0]
    assert repr(config).startswith("ImageConfig(architecture='amd64', os='linux', ")
    assert "raw=" not in repr(config)
    assert repr(config).endswith(f"digest={config.digest!r}, os_features=('f',))")


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(name: str, protocol: int) -> None:
    a = CASES[name][0]
    b = pickle.loads(pickle.dumps(a, protocol))
    assert type(b) is type(a)
    assert b == a
    assert repr(b) == repr(a)
    with pytest.raises(AttributeError):
        setattr(b, a._fields[0], None)


@pytest.mark.parametrize("name", IDS)
def test_copy_and_deepcopy(name: str) -> None:
    a = CASES[name][0]
    assert copy.copy(a) == a
    assert copy.deepcopy(a) == a


def test_descriptor_constructor_order_and_defaults() -> None:
    plat = Platform("linux", "amd64")
    d = Descriptor("x/y", D1, 5, ("u",), {"a": "b"}, plat, "art", b"12345")  # type: ignore[arg-type]
    assert (d.media_type, d.digest, d.size, d.urls) == ("x/y", D1, 5, ("u",))
    assert (d.annotations, d.platform, d.artifact_type, d.data) == (
        {"a": "b"},
        plat,
        "art",
        b"12345",
    )
    assert type(d.media_type) is MediaType  # a plain str is coerced
    e = Descriptor(media_type=OCI_LAYER_GZIP, digest=D1, size=0)
    assert (e.urls, e.annotations, e.platform, e.artifact_type, e.data) == ((), {}, None, "", None)


def test_default_annotations_are_a_new_dict_per_descriptor() -> None:
    a, b = _layer(), _layer()
    assert a.annotations == {} and b.annotations == {}
    assert a.annotations is not b.annotations


@pytest.mark.parametrize("size", [-1, True, 1.5, "3", None])
def test_descriptor_validates_its_size(size: Any) -> None:
    with pytest.raises(MalformedDocument, match="invalid size"):
        Descriptor(OCI_LAYER_GZIP, D1, size)


def test_image_config_os_features_is_keyword_only() -> None:
    args = ("amd64", "linux", "", "", "", "", ContainerConfig(), (D1,), (History(),), b"{}", D2)
    config = ImageConfig(*args, os_features=("f",))
    assert config.os_features == ("f",)
    assert ImageConfig(*args).os_features == ()
    with pytest.raises(TypeError):
        ImageConfig(*args, ("f",))  # type: ignore[call-arg]


def test_match_args_are_the_positional_fields() -> None:
    match parse_reference("alpine"):
        case Reference(domain, path, tag, digest):
            assert (domain, path, tag, digest) == ("docker.io", "library/alpine", "latest", None)
        case _:
            pytest.fail("a Reference matches its own class pattern")
    assert "os_features" not in ImageConfig.__match_args__
    assert Manifest.__match_args__[-2:] == ("config", "layers")


# ------------------------------------------------------------------------- replace


def test_descriptor_replace_changes_one_field_and_keeps_the_rest() -> None:
    d = _layer(urls=("u",), annotations={"a": "b"})
    e = d.replace(size=9)
    assert e.size == 9 and d.size == 3
    assert (e.media_type, e.digest, e.urls, e.annotations) == (
        d.media_type,
        d.digest,
        ("u",),
        {"a": "b"},
    )
    assert d.replace() == d
    assert d.replace(platform=None, data=None) == d  # None is a value, not "unchanged"
    f = d.replace(media_type="x/y")  # type: ignore[arg-type]
    assert type(f.media_type) is MediaType


def test_descriptor_replace_validates_again() -> None:
    with pytest.raises(MalformedDocument, match="invalid size -1"):
        _layer().replace(size=-1)


def test_reference_replace_validates_again() -> None:
    ref = parse_reference("alpine")
    assert ref.replace(tag="3") == parse_reference("alpine:3")
    assert ref.replace(digest=D1, tag="") == parse_reference(f"alpine@{D1}")
    with pytest.raises(InvalidReference, match="invalid tag"):
        ref.replace(tag="no spaces")
    with pytest.raises(InvalidReference, match="invalid repository path"):
        ref.replace(path="UPPER")
    assert ref.with_tag("2").digest is None
    assert ref.with_digest(D1).tag == "latest"


def test_transport_ref_replace_validates_again() -> None:
    t = TransportRef("oci", "dir")
    assert t.replace(tag="x") == TransportRef("oci", "dir", "x")
    with pytest.raises(InvalidReference, match="needs a reference"):
        t.replace(transport="docker")
    with pytest.raises(InvalidReference, match="must not contain"):
        t.replace(path="a:b")


def test_document_replace() -> None:
    m = _manifest()
    n = m.replace(annotations={"k": "v"})
    assert n.annotations == {"k": "v"} and m.annotations == {}
    assert (n.raw, n.digest, n.config, n.layers) == (m.raw, m.digest, m.config, m.layers)
    assert n != m and hash(n) == hash(m)
    idx = _index()
    assert idx.replace(manifests=()).manifests == ()
    config = CASES["ImageConfig"][0]
    assert config.replace(os_features=()).os_features == ()
    assert config.replace(os="windows").platform() == Platform(
        "windows", "amd64", os_features=("f",)
    )


# ------------------------------------------------------------------------- start-up

#: The modules that define the records, and the package's lazy names for them.
_IMPORT_RECORDS = (
    "import sys\n"
    "import imgpipe.formats.descriptor, imgpipe.formats.reference\n"
    "import imgpipe.formats.manifest, imgpipe.formats.config\n"
    "from imgpipe.formats import Descriptor, ImageConfig, Index, Manifest, Reference\n"
    "from imgpipe.formats import TransportRef, parse_config, parse_manifest\n"
    "print('dataclasses' in sys.modules)\n"
)


def test_importing_the_records_does_not_load_dataclasses() -> None:
    # import dataclasses costs 12-19 ms (inspect, ast, dis, tokenize) on every start-up
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_RECORDS],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_config_without_a_container_config_pickles(protocol: int) -> None:
    """A config with no "config" object gets the shared empty labels: read-only, and
    picklable (a mappingproxy was not: such a config could not go to a worker process)."""
    raw = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config = parse_config(raw)
    labels = ContainerConfig().labels
    assert labels == {} and not labels
    with pytest.raises(TypeError):
        labels["a"] = "b"  # type: ignore[index]
    back = pickle.loads(pickle.dumps(config, protocol))
    assert back == config
    assert back.config is not None and back.config.labels is labels
