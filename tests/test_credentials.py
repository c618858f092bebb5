"""Credentials from the Docker config file and real credential-helper subprocesses."""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path

import pytest

from imgpipe.errors import MalformedDocument, Unauthorized
from imgpipe.remote.credentials import (
    Credentials,
    config_path,
    erase,
    lookup,
    normalize_host,
    store,
)

# A docker-credential-helpers compatible helper keeping its secrets in a JSON file named by
# $FAKE_HELPER_DB; $FAKE_HELPER_FAIL makes every call fail with a message on stderr.
HELPER = """\
#!{python}
import json, os, sys
db = os.environ["FAKE_HELPER_DB"]
action = sys.argv[1]
data = json.load(open(db)) if os.path.exists(db) else {{}}
with open(db + ".log", "a") as log:
    log.write(action + "\\n")
if os.environ.get("FAKE_HELPER_FAIL"):
    sys.stderr.write("keychain is locked\\n")
    sys.exit(1)
if action == "get":
    url = sys.stdin.read().strip()
    if url not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = data[url]
    json.dump({{"ServerURL": url, "Username": user, "Secret": secret}}, sys.stdout)
elif action == "store":
    req = json.load(sys.stdin)
    data[req["ServerURL"]] = [req["Username"], req["Secret"]]
    json.dump(data, open(db, "w"))
elif action == "erase":
    url = sys.stdin.read().strip()
    if url not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    del data[url]
    json.dump(data, open(db, "w"))
"""


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated HOME with no Docker config variables set; returns HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return home


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install ``docker-credential-test`` on PATH; returns its database file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker-credential-test"
    exe.write_text(HELPER.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    db = tmp_path / "helper-db.json"
    monkeypatch.setenv("FAKE_HELPER_DB", str(db))
    return db


def write_config(path: Path, doc: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://index.docker.io/v1/", "registry-1.docker.io"),
        ("index.docker.io", "docker.io"),
        ("docker.io", "https://index.docker.io/v1/"),
        ("http://reg.example:5000/v2/", "reg.example:5000"),
        ("reg.example:5000", "https://reg.example:5000"),
        ("REG.Example", "reg.example"),
    ],
)
def test_host_keys_normalise(env: Path, key: str, host: str) -> None:
    write_config(env / ".docker/config.json", {"auths": {key: {"auth": b64("u:p")}}})
    assert lookup(host) == Credentials("u", "p")


@pytest.mark.parametrize(
    ("key", "other"),
    [("reg.example:5000", "reg.example"), ("reg.example", "reg.example.evil"), ("a.io", "b.io")],
)
def test_other_hosts_get_nothing(env: Path, key: str, other: str) -> None:
    write_config(env / ".docker/config.json", {"auths": {key: {"auth": b64("u:p")}}})
    assert lookup(other) is None


def test_normalize_host() -> None:
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("http://127.0.0.1:5000/v2/x") == "127.0.0.1:5000"


def test_password_with_colon_and_identity_token(env: Path) -> None:
    write_config(
        env / ".docker/config.json",
        {
            "auths": {
                "a.io": {"auth": b64("alice:pa:ss")},
                "b.io": {"auth": b64("bob:"), "identitytoken": "refresh-me"},
                "c.io": {},
            }
        },
    )
    assert lookup("a.io") == Credentials("alice", "pa:ss")
    assert lookup("b.io") == Credentials("bob", "", "refresh-me")
    assert lookup("c.io") is None


def test_file_location_precedence(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cfg(name: str) -> dict[str, object]:
        return {"auths": {"r.io": {"auth": b64(f"{name}:x")}}}

    write_config(env / ".docker/config.json", cfg("home"))
    assert lookup("r.io") == Credentials("home", "x")
    docker_config = tmp_path / "dc"
    write_config(docker_config / "config.json", cfg("docker_config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    assert lookup("r.io") == Credentials("docker_config", "x")
    monkeypatch.setenv(
        "REGISTRY_AUTH_FILE", str(write_config(tmp_path / "raf.json", cfg("registry_auth")))
    )
    assert lookup("r.io") == Credentials("registry_auth", "x")
    explicit = write_config(tmp_path / "explicit.json", cfg("explicit"))
    assert lookup("r.io", auth_file=explicit) == Credentials("explicit", "x")
    assert config_path(explicit) == explicit


def test_missing_file_is_no_credentials(env: Path, tmp_path: Path) -> None:
    assert lookup("r.io") is None
    assert lookup("r.io", auth_file=tmp_path / "nope.json") is None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"auths": []}',
        '{"auths": {"r.io": {"auth": "%%%"}}}',
        '{"auths": {"r.io": {"auth": "' + b64("nocolon") + '"}}}',
    ],
)
def test_malformed_file(env: Path, content: str) -> None:
    path = env / ".docker/config.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(MalformedDocument, match=r"config\.json"):
        lookup("r.io")


def test_repr_hides_secrets() -> None:
    c = Credentials("alice", "hunter2", "")
    t = Credentials("", "", "tok-secret")
    for text in (repr(c), str(c), repr([c, t]), f"{t}"):
        assert "hunter2" not in text
        assert "tok-secret" not in text
    assert "alice" in repr(c)


def test_store_writes_private_file_and_keeps_other_entries(env: Path) -> None:
    path = write_config(
        env / "cfg/config.json",
        {"auths": {"keep.io": {"auth": b64("k:k")}}, "psFormat": "table"},
    )
    out = store("new.io:5000", Credentials("n", "secret"), auth_file=path)
    assert out == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table"
    assert set(doc["auths"]) == {"keep.io", "new.io:5000"}
    assert lookup("new.io:5000", auth_file=path) == Credentials("n", "secret")
    assert lookup("keep.io", auth_file=path) == Credentials("k", "k")
    # the same host under another spelling is replaced, not duplicated
    store("https://new.io:5000/v2/", Credentials("n2", "s2"), auth_file=path)
    doc = json.loads(path.read_text())
    assert set(doc["auths"]) == {"keep.io", "new.io:5000"}
    assert lookup("new.io:5000", auth_file=path) == Credentials("n2", "s2")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left


def test_store_creates_private_directory(env: Path) -> None:
    store("docker.io", Credentials("u", "p"))
    path = env / ".docker/config.json"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Docker Hub is written under the key the Docker CLI uses
    assert list(json.loads(path.read_text())["auths"]) == ["https://index.docker.io/v1/"]
    assert lookup("registry-1.docker.io") == Credentials("u", "p")


def test_store_identity_token(env: Path) -> None:
    store("r.io", Credentials("u", "", "tok"))
    assert lookup("r.io") == Credentials("u", "", "tok")


def test_erase(env: Path) -> None:
    path = write_config(
        env / ".docker/config.json",
        {"auths": {"http://r.io/": {"auth": b64("u:p")}, "o.io": {"auth": b64("o:o")}}},
    )
    assert erase("r.io") is True
    assert lookup("r.io") is None
    assert lookup("o.io") == Credentials("o", "o")
    assert erase("r.io") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cred_helper_per_host(env: Path, helper: Path) -> None:
    helper.write_text(
        json.dumps({"h.io": ["hu", "hs"], "https://index.docker.io/v1/": ["d", "ds"]})
    )
    write_config(
        env / ".docker/config.json",
        {
            "credHelpers": {"h.io": "test", "docker.io": "test"},
            "auths": {"plain.io": {"auth": b64("pu:ps")}, "h.io": {"auth": b64("stale:x")}},
        },
    )
    assert lookup("h.io") == Credentials("hu", "hs")  # the helper wins over auths
    assert lookup("registry-1.docker.io") == Credentials("d", "ds")  # asked with Hub's URL
    assert lookup("plain.io") == Credentials("pu", "ps")  # no helper for it
    assert "get" in (helper.parent / "helper-db.json.log").read_text()


def test_creds_store_default_and_fallback(env: Path, helper: Path) -> None:
    helper.write_text(json.dumps({"s.io": ["su", "ss"], "t.io": ["<token>", "refresh"]}))
    write_config(
        env / ".docker/config.json",
        {"credsStore": "test", "auths": {"old.io": {"auth": b64("ou:op")}}},
    )
    assert lookup("s.io") == Credentials("su", "ss")
    assert lookup("t.io") == Credentials(identity_token="refresh")
    assert lookup("none.io") is None  # "credentials not found" is not an error
    assert lookup("old.io") == Credentials("ou", "op")  # helper has none: the file's entry


def test_helper_failure_is_unauthorized_without_secrets(
    env: Path, helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper.write_text(json.dumps({"s.io": ["su", "very-secret"]}))
    write_config(env / ".docker/config.json", {"credsStore": "test"})
    monkeypatch.setenv("FAKE_HELPER_FAIL", "1")
    with pytest.raises(Unauthorized, match="keychain is locked") as exc:
        lookup("s.io")
    assert "very-secret" not in str(exc.value)
    assert "docker-credential-test" in str(exc.value)


def test_missing_helper_is_unauthorized(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    write_config(env / ".docker/config.json", {"credHelpers": {"x.io": "nonexistent-helper"}})
    with pytest.raises(Unauthorized, match="docker-credential-nonexistent-helper"):
        lookup("x.io")
    assert lookup("y.io") is None  # only that host uses the helper


def test_store_and_erase_through_helper(env: Path, helper: Path) -> None:
    path = write_config(env / ".docker/config.json", {"credsStore": "test"})
    store("s.io", Credentials("su", "the-secret"))
    assert json.loads(helper.read_text()) == {"s.io": ["su", "the-secret"]}
    assert "the-secret" not in path.read_text()  # the secret went to the helper only
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert lookup("s.io") == Credentials("su", "the-secret")
    store("t.io", Credentials(identity_token="tok"))
    assert json.loads(helper.read_text())["t.io"] == ["<token>", "tok"]
    assert erase("s.io") is True
    assert "s.io" not in json.loads(helper.read_text())
    assert lookup("s.io") is None
