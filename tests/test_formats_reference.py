"""Reference and transport parsing: Docker's grammar and skopeo's transports (tables)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgpipe.formats import InvalidArgument, InvalidReference
from imgpipe.formats.digest import Digest
from imgpipe.formats.reference import (
    Reference,
    TransportRef,
    parse_reference,
    parse_transport,
)

H = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
DG = f"sha256:{H}"

# text, domain, path, tag, digest, str, familiar
VALID = [
    ("alpine", "docker.io", "library/alpine", "latest", None,
     "docker.io/library/alpine:latest", "alpine:latest"),
    ("alpine:3.19", "docker.io", "library/alpine", "3.19", None,
     "docker.io/library/alpine:3.19", "alpine:3.19"),
    ("user/app", "docker.io", "user/app", "latest", None,
     "docker.io/user/app:latest", "user/app:latest"),
    ("user/app:1", "docker.io", "user/app", "1", None, "docker.io/user/app:1", "user/app:1"),
    ("docker.io/library/alpine", "docker.io", "library/alpine", "latest", None,
     "docker.io/library/alpine:latest", "alpine:latest"),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None,
     "docker.io/library/alpine:latest", "alpine:latest"),
    ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("library/a/b", "docker.io", "library/a/b", "latest", None,
     "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/app", "localhost", "app", "latest", None,
     "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:tag", "localhost:5000", "a/b", "tag", None,
     "localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
    (f"127.0.0.1:5000/x@{DG}", "127.0.0.1:5000", "x", "", Digest.parse(DG),
     f"127.0.0.1:5000/x@{DG}", f"127.0.0.1:5000/x@{DG}"),
    (f"quay.io/org/img:v1@{DG}", "quay.io", "org/img", "v1", Digest.parse(DG),
     f"quay.io/org/img:v1@{DG}", f"quay.io/org/img:v1@{DG}"),
    (f"alpine@{DG}", "docker.io", "library/alpine", "", Digest.parse(DG),
     f"docker.io/library/alpine@{DG}", f"alpine@{DG}"),
    ("ghcr.io/a/b/c/d:latest", "ghcr.io", "a/b/c/d", "latest", None,
     "ghcr.io/a/b/c/d:latest", "ghcr.io/a/b/c/d:latest"),
    ("[::1]:5000/img:1", "[::1]:5000", "img", "1", None, "[::1]:5000/img:1", "[::1]:5000/img:1"),
    ("Registry.Example.COM/app", "Registry.Example.COM", "app", "latest", None,
     "Registry.Example.COM/app:latest", "Registry.Example.COM/app:latest"),
    ("Foo/bar", "Foo", "bar", "latest", None, "Foo/bar:latest", "Foo/bar:latest"),
    ("my-registry:443/a_b/c.d/e__f/g--h:T_a.g-1", "my-registry:443", "a_b/c.d/e__f/g--h",
     "T_a.g-1", None, "my-registry:443/a_b/c.d/e__f/g--h:T_a.g-1",
     "my-registry:443/a_b/c.d/e__f/g--h:T_a.g-1"),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None,
     "docker.io/library/localhost:5000", "localhost:5000"),  # Docker reads this the same
    ("docker.io/a.b/c", "docker.io", "a.b/c", "latest", None,
     "docker.io/a.b/c:latest", "docker.io/a.b/c:latest"),  # short form would read a.b as host
    ("example.com", "docker.io", "library/example.com", "latest", None,
     "docker.io/library/example.com:latest", "example.com:latest"),
    ("a" * 10 + ":" + "t" * 128, "docker.io", "library/" + "a" * 10, "t" * 128, None,
     "docker.io/library/" + "a" * 10 + ":" + "t" * 128, "a" * 10 + ":" + "t" * 128),
]  # fmt: skip


@pytest.mark.parametrize("row", VALID, ids=[r[0][:40] for r in VALID])
def test_parse_reference_valid(row: tuple[str, str, str, str, Digest | None, str, str]) -> None:
    text, domain, path, tag, digest, full, familiar = row
    r = parse_reference(text)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, digest)
    assert r.name == f"{domain}/{path}"
    assert str(r) == full
    assert r.familiar() == familiar
    # The canonical string and the familiar form parse back to the same reference.
    assert parse_reference(str(r)) == r
    assert parse_reference(r.familiar()) == r


INVALID = [
    ("", "empty"),
    ("Alpine", "lowercase"),
    ("user/App", "lowercase"),
    ("docker.io/Library/alpine", "lowercase"),
    ("alpine:", "tag"),
    ("alpine:-x", "tag"),
    ("alpine:.x", "tag"),
    ("alpine:" + "t" * 129, "tag"),
    ("alpine:ta/g", "registry"),  # no tag after the last '/': "alpine:ta" is a host:port
    ("alpine@sha256:abc", "invalid sha256 digest"),
    ("alpine@md5:" + "a" * 32, "unsupported"),
    ("alpine@", "digest"),
    (H, "image ID"),
    ("/alpine", "repository"),
    ("alpine/", "repository"),
    ("a//b", "repository"),
    ("a/b_/c", "repository"),
    ("a/-b", "repository"),
    ("a/b..c", "repository"),
    ("a/b___c", "repository"),
    ("localhost:port/x", "registry"),
    ("-bad.example.com/x", "registry"),
    ("bad-.example.com/x", "registry"),
    ("exa mple.com/x", "registry"),
    ("[::1/x", "registry"),
    ("alpine:1 ", "tag"),
    (" alpine", "repository"),
    ("alpine\n", "repository"),
    ("x.io/" + "a" * 251, "longer than 255"),
    (":tag", "missing repository"),
    ("@" + DG, "missing repository"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_parse_reference_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(text)


def test_invalid_reference_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        parse_reference("UPPER")
    with pytest.raises(ValueError, match="lowercase"):
        parse_reference("UPPER")


def test_non_string_reference() -> None:
    with pytest.raises(InvalidReference):
        parse_reference(None)  # type: ignore[arg-type]


def test_reference_defaults_and_helpers() -> None:
    r = Reference("docker.io", "library/alpine")
    assert str(r) == "docker.io/library/alpine:latest"  # neither tag nor digest given
    assert r.familiar() == "alpine:latest"
    d = Digest.parse(DG)
    pinned = r.with_digest(d)
    assert str(pinned) == f"docker.io/library/alpine@{DG}"
    tagged = parse_reference("alpine:3").with_digest(d)
    assert str(tagged) == f"docker.io/library/alpine:3@{DG}"
    assert str(tagged.with_tag("edge")) == "docker.io/library/alpine:edge"


@pytest.mark.parametrize(
    ("domain", "path", "tag"),
    [
        ("bad domain", "a", ""),
        ("docker.io", "Upper", ""),
        ("docker.io", "a", "bad tag"),
        ("docker.io", "", ""),
    ],
)
def test_reference_construction_validates(domain: str, path: str, tag: str) -> None:
    with pytest.raises(InvalidReference):
        Reference(domain, path, tag)


_component = st.from_regex(r"[a-z0-9]{1,5}(?:[._-][a-z0-9]{1,5}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    domain=st.sampled_from(["docker.io", "localhost:5000", "quay.io", "127.0.0.1:5000"]),
    parts=st.lists(_component, min_size=1, max_size=3),
    tag=_tag,
    pin=st.booleans(),
)
def test_reference_string_round_trip(domain: str, parts: list[str], tag: str, pin: bool) -> None:
    text = f"{domain}/{'/'.join(parts)}:{tag}" + (f"@{DG}" if pin else "")
    r = parse_reference(text)
    assert r.tag == tag
    assert parse_reference(str(r)) == r
    assert parse_reference(r.familiar()) == r


# ------------------------------------------------------------------------ transports

TRANSPORTS = [
    ("docker://alpine", TransportRef("docker", reference=parse_reference("alpine")),
     "docker://docker.io/library/alpine:latest"),
    ("docker://localhost:5000/a:1", TransportRef("docker", reference=parse_reference(
        "localhost:5000/a:1")), "docker://localhost:5000/a:1"),
    ("alpine", TransportRef("docker", reference=parse_reference("alpine")),
     "docker://docker.io/library/alpine:latest"),
    ("localhost:5000/a/b", TransportRef("docker", reference=parse_reference(
        "localhost:5000/a/b")), "docker://localhost:5000/a/b:latest"),
    ("foo:bar", TransportRef("docker", reference=parse_reference("foo:bar")),
     "docker://docker.io/library/foo:bar"),  # an unknown prefix is a name and a tag
    ("docker:5000/a", TransportRef("docker", reference=Reference("docker:5000", "a", "latest")),
     "docker://docker:5000/a:latest"),
    ("oci:/tmp/layout", TransportRef("oci", path="/tmp/layout"), "oci:/tmp/layout"),
    ("oci:/tmp/layout:v1", TransportRef("oci", path="/tmp/layout", tag="v1"),
     "oci:/tmp/layout:v1"),
    ("oci:rel/dir:docker.io/library/alpine:3", TransportRef(
        "oci", path="rel/dir", tag="docker.io/library/alpine:3"),
     "oci:rel/dir:docker.io/library/alpine:3"),
    ("oci-archive:img.tar", TransportRef("oci-archive", path="img.tar"), "oci-archive:img.tar"),
    ("oci-archive:/x/img.tar:latest", TransportRef("oci-archive", path="/x/img.tar",
                                                    tag="latest"),
     "oci-archive:/x/img.tar:latest"),
    ("docker-archive:save.tar", TransportRef("docker-archive", path="save.tar"),
     "docker-archive:save.tar"),
    ("docker-archive:save.tar:alpine:3", TransportRef(
        "docker-archive", path="save.tar", tag="alpine:3",
        reference=parse_reference("alpine:3")), "docker-archive:save.tar:alpine:3"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "want", "back"), TRANSPORTS)
def test_parse_transport_valid(text: str, want: TransportRef, back: str) -> None:
    got = parse_transport(text)
    assert got == want
    assert str(got) == back
    assert parse_transport(str(got)) == got


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("oci:", "missing path"),
        ("oci::tag", "missing path"),
        ("oci-archive:", "missing path"),
        ("docker-archive:", "missing path"),
        ("oci:/dir:@0", "index"),
        ("docker-archive:a.tar:@1", "index"),
        ("oci:/dir:bad name", "image name"),
        ("oci:/dir:-x", "image name"),
        (f"docker-archive:a.tar:alpine@{DG}", "by tag"),
        ("docker-archive:a.tar:UPPER", "lowercase"),
        ("docker://", "empty"),
        ("docker://UPPER", "lowercase"),
        ("docker:/alpine", "docker://REF"),
        ("foo:bar/x", "registry"),
    ],
)
def test_parse_transport_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_transport(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transport": "ftp", "path": "x"},
        {"transport": "docker"},
        {"transport": "oci"},
        {"transport": "oci", "path": "a:b"},
    ],
)
def test_transport_ref_construction_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidReference):
        TransportRef(**kwargs)
