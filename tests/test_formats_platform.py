"""Platform parsing, normalisation and matching (containerd's rules, tables)."""

from __future__ import annotations

import pytest

from imgpipe.formats import InvalidArgument, MalformedDocument
from imgpipe.formats.platform import (
    Platform,
    PlatformMatcher,
    best_match,
    host_platform,
    match,
)

HOST = host_platform()

# ------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/aarch64", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm64/8", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8.2", Platform("linux", "arm64", "v8.2")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/arm/5", Platform("linux", "arm", "v5")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/armv7l", Platform("linux", "arm", "v7")),
        ("linux/i386", Platform("linux", "386")),
        ("linux/i686", Platform("linux", "386")),
        ("linux/386", Platform("linux", "386")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        ("linux/s390x", Platform("linux", "s390x")),
        ("linux/riscv64", Platform("linux", "riscv64")),
        ("macos/arm64", Platform("darwin", "arm64", "v8")),
        ("darwin/amd64", Platform("darwin", "amd64")),
        ("windows/amd64", Platform("windows", "amd64")),
        (
            "windows(10.0.17763)/amd64",
            Platform("windows", "amd64", os_version="10.0.17763"),
        ),
        (
            "windows(10.0.17763+win32k)/amd64",
            Platform("windows", "amd64", os_version="10.0.17763", os_features=("win32k",)),
        ),
        # One word: a known OS takes the host's architecture, else an architecture takes
        # the host's OS.
        ("linux", Platform("linux", HOST.architecture, HOST.variant)),
        ("windows", Platform("windows", HOST.architecture, HOST.variant)),
        ("arm64", Platform(HOST.os, "arm64", "v8")),
        ("x86_64", Platform(HOST.os, "amd64")),
        ("armhf", Platform(HOST.os, "arm", "v7")),
    ],
)
def test_parse_table(text: str, want: Platform) -> None:
    got = Platform.parse(text)
    assert got == want
    # Parsing returns the normal form; normalising it again changes nothing.
    assert got.normalized() == got


@pytest.mark.parametrize(
    "text",
    [
        "",
        "linux/",
        "/amd64",
        "linux//v7",
        "linux/amd64/v8/extra",
        "linux/*",
        "*",
        "linux/amd 64",
        "linux/amd64;v2",
        "notanos",
        "foo(1.0)",
        "linux(((/amd64",
        "lin ux/amd64",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Platform.parse(text)


def test_parse_non_string() -> None:
    with pytest.raises(InvalidArgument):
        Platform.parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "want"),
    [
        (Platform("Linux", "X86_64"), Platform("linux", "amd64")),
        (Platform("linux", "aarch64"), Platform("linux", "arm64", "v8")),
        (Platform("linux", "arm64", "V8"), Platform("linux", "arm64", "v8")),
        (Platform("linux", "arm"), Platform("linux", "arm", "v7")),
        (Platform("linux", "armel", "v7"), Platform("linux", "arm", "v6")),
        (Platform("linux", "amd64", "v1"), Platform("linux", "amd64")),
        (Platform("linux", "i386", "v5"), Platform("linux", "386")),
        (Platform("linux", "mips64le"), Platform("linux", "mips64le")),
        (Platform("MacOS", "arm64"), Platform("darwin", "arm64", "v8")),
        (
            Platform("windows", "amd64", os_features=("b", "a", "b")),
            Platform("windows", "amd64", os_features=("a", "b")),
        ),
    ],
)
def test_normalized_table(given: Platform, want: Platform) -> None:
    assert given.normalized() == want


def test_str_and_json_round_trip() -> None:
    p = Platform("windows", "amd64", "", "10.0.17763.1", ("win32k",))
    assert str(p) == "windows/amd64"
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    assert p.to_json() == {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.1",
        "os.features": ["win32k"],
    }
    assert Platform.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {"os": "linux"},
        {"architecture": "amd64"},
        {"os": "linux", "architecture": 1},
        {"os": "linux", "architecture": "arm", "variant": 7},
        {"os": "linux", "architecture": "arm", "os.features": "x"},
    ],
)
def test_from_json_invalid(obj: object) -> None:
    with pytest.raises(MalformedDocument):
        Platform.from_json(obj)


def test_host_platform_is_normal_and_known() -> None:
    h = host_platform()
    assert h == h.normalized()
    assert h.os and h.architecture
    # The host always runs its own images.
    assert match(h, h)


# ------------------------------------------------------------------------ matching

P = Platform.parse

# want, have, matches?
MATCH_TABLE = [
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/x86_64", True),
    ("linux/amd64", "linux/amd64/v1", True),
    ("linux/amd64", "linux/386", True),
    ("linux/amd64", "linux/amd64/v2", False),  # a v1 host cannot run v2 code
    ("linux/amd64/v3", "linux/amd64/v2", True),
    ("linux/amd64/v3", "linux/amd64", True),
    ("linux/amd64/v3", "linux/amd64/v4", False),
    ("linux/amd64/v2", "linux/386", True),
    ("linux/amd64", "windows/amd64", False),  # the OS must match
    ("linux/amd64", "linux/arm64", False),
    ("linux/arm64", "linux/arm64", True),
    ("linux/arm64", "linux/arm64/v8", True),  # empty and v8 are one
    ("linux/arm64/v8", "linux/aarch64", True),
    ("linux/arm64", "linux/arm/v7", True),
    ("linux/arm64", "linux/arm/v8", True),
    ("linux/arm64", "linux/arm/v5", True),
    ("linux/arm64", "linux/amd64", False),
    ("linux/arm64", "linux/arm64/v8.1", False),  # newer than the host
    ("linux/arm64/v8.2", "linux/arm64/v8.1", True),
    ("linux/arm64/v8.2", "linux/arm64", True),
    ("linux/arm64/v9", "linux/arm64/v8.5", True),
    ("linux/arm64/v9", "linux/arm64/v8.6", False),
    ("linux/arm64/v9.2", "linux/arm64/v8.7", True),
    ("linux/arm64/v9.2", "linux/arm64/v9.1", True),
    ("linux/arm64/v9.2", "linux/arm64/v9.3", False),
    ("linux/arm/v7", "linux/arm/v7", True),
    ("linux/arm/v7", "linux/arm", True),
    ("linux/arm/v7", "linux/arm/v6", True),
    ("linux/arm/v7", "linux/arm/v5", True),
    ("linux/arm/v7", "linux/arm/v8", False),
    ("linux/arm/v7", "linux/arm64", False),
    ("linux/arm/v6", "linux/arm/v7", False),
    ("linux/arm/v6", "linux/armel", True),
    ("linux/arm/v5", "linux/arm/v6", False),
    ("linux/386", "linux/amd64", False),
    ("linux/ppc64le", "linux/ppc64le", True),
    ("linux/s390x", "linux/ppc64le", False),
]


@pytest.mark.parametrize(("want", "have", "ok"), MATCH_TABLE)
def test_match_table(want: str, have: str, ok: bool) -> None:
    assert match(P(want), P(have)) is ok
    assert PlatformMatcher(P(want)).match(P(have)) is ok


@pytest.mark.parametrize(("want", "have", "ok"), MATCH_TABLE)
def test_strict_matches_only_the_same_platform(want: str, have: str, ok: bool) -> None:
    same = P(want).normalized() == P(have).normalized()
    assert match(P(want), P(have), strict=True) is same
    assert not same or ok


def test_match_accepts_unnormalised_platforms() -> None:
    assert match(Platform("Linux", "x86_64"), Platform("linux", "amd64", "v1"))
    assert match(Platform("linux", "aarch64"), Platform("linux", "arm64", ""))


def test_os_features_must_be_a_subset_of_wanted() -> None:
    want = Platform("windows", "amd64", os_features=("win32k",))
    assert match(want, Platform("windows", "amd64"))
    assert match(want, Platform("windows", "amd64", os_features=("win32k",)))
    assert not match(want, Platform("windows", "amd64", os_features=("other",)))
    assert not match(Platform("windows", "amd64"), Platform("windows", "amd64", os_features=("x",)))


def test_windows_os_version_compares_the_build() -> None:
    want = Platform("windows", "amd64", os_version="10.0.17763.2300")
    assert match(want, Platform("windows", "amd64", os_version="10.0.17763.1"))
    assert match(want, Platform("windows", "amd64"))
    assert not match(want, Platform("windows", "amd64", os_version="10.0.20348.1"))
    # Elsewhere os.version is informational and ignored.
    assert match(Platform("linux", "amd64", os_version="5"), Platform("linux", "amd64"))


@pytest.mark.parametrize(
    ("want", "order"),
    [
        ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
        ("linux/amd64", ["linux/amd64", "linux/386"]),
        ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v5", ["linux/arm/v5"]),
        (
            "linux/arm64",
            ["linux/arm64/v8", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"],
        ),
        (
            "linux/arm64/v9.1",
            [
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.6",
                "linux/arm64/v8.5",
                "linux/arm64/v8.4",
                "linux/arm64/v8.3",
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        ("linux/riscv64", ["linux/riscv64"]),
    ],
)
def test_compatible_order_is_documented_order(want: str, order: list[str]) -> None:
    assert [str(p) for p in PlatformMatcher(P(want)).compatible] == order


def test_best_match_prefers_exact_then_closest() -> None:
    cands = [P("linux/arm/v5"), P("linux/arm/v7"), P("linux/arm/v6"), P("linux/amd64")]
    assert best_match(P("linux/arm/v7"), cands) == 1
    assert best_match(P("linux/arm/v6"), cands) == 2
    assert best_match(P("linux/arm64"), cands) == 1  # arm64 runs arm/v7 before v6, v5
    assert best_match(P("linux/s390x"), cands) is None
    assert best_match(P("linux/arm/v7"), []) is None


def test_best_match_ties_keep_input_order() -> None:
    cands = [P("windows/amd64"), P("linux/amd64"), P("linux/x86_64"), P("linux/386")]
    assert best_match(P("linux/amd64"), cands) == 1


def test_best_match_amd64_levels() -> None:
    cands = [P("linux/386"), P("linux/amd64"), P("linux/amd64/v2"), P("linux/amd64/v4")]
    assert best_match(P("linux/amd64/v3"), cands) == 2
    assert best_match(P("linux/amd64"), cands) == 1
    assert best_match(P("linux/amd64"), [P("linux/386")]) == 0
    assert best_match(P("linux/amd64"), [P("linux/amd64/v2")]) is None


def test_order_and_less() -> None:
    m = PlatformMatcher(P("linux/arm/v7"))
    cands = [P("linux/arm/v5"), P("linux/amd64"), P("linux/arm/v7"), P("linux/arm/v6")]
    assert m.order(cands) == [2, 3, 0]
    assert m.less(P("linux/arm/v7"), P("linux/arm/v6"))
    assert not m.less(P("linux/arm/v6"), P("linux/arm/v7"))
    assert m.less(P("linux/arm/v5"), P("linux/amd64"))
    assert not m.less(P("linux/amd64"), P("linux/arm/v5"))
    assert m.rank(P("linux/arm/v7")) == 0
    assert m.rank(P("linux/amd64")) is None
    assert m.want == P("linux/arm/v7")
