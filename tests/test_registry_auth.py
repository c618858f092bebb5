"""Authentication end to end: the real registry with htpasswd over TLS and with tokens.

Every command runs as a subprocess with its own HOME and Docker config, so nothing of the
user's is read or written. Secrets must never show in any output, even with ``--debug``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import IMGPIPE
from registry_fixtures import Registry

EXIT_UNAUTHORIZED = 12


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def imgpipe(
    *args: str | os.PathLike[str],
    home: Path,
    root: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The CLI with HOME (and so ~/.docker) in the test's directory."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "IMGPIPE_CONFIG")
    }
    full_env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), **(env or {}))
    argv: list[str | os.PathLike[str]] = [IMGPIPE, "--root", root or home / "root", *args]
    return subprocess.run(
        argv,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def assert_refused(r: subprocess.CompletedProcess[str], *secrets: str) -> None:
    """Exit 12 with exactly one error line, and no secret anywhere."""
    assert r.returncode == EXIT_UNAUTHORIZED, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("imgpipe: error:")
    assert_no_secrets(r, *secrets)


def assert_no_secrets(r: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for s in secrets:
        assert s not in r.stdout and s not in r.stderr, "a secret was printed"


def login(
    reg: Registry, home: Path, password: str, *extra: str, debug: bool = False
) -> subprocess.CompletedProcess[str]:
    assert reg.username is not None
    tls = ["--tls-ca", str(reg.ca_file)] if reg.ca_file else []
    pre = ["--debug"] if debug else []
    return imgpipe(
        *pre,
        "login",
        reg.host,
        "-u",
        reg.username,
        "--password-stdin",
        *tls,
        *extra,
        home=home,
        stdin=password + "\n",
    )


# -- Basic auth over TLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_image(registry_basic_tls: Registry, fixture_dir: Path) -> str:
    registry_basic_tls.push_layout(fixture_dir / "busybox", "busybox", "auth/busybox", "v1")
    return registry_basic_tls.ref("auth/busybox", "v1")


def test_basic_wrong_password_is_one_line_exit_12(registry_basic_tls: Registry, home: Path) -> None:
    wrong = "not-the-password-" + "x" * 8
    for debug in (False, True):
        r = login(registry_basic_tls, home, wrong, debug=debug)
        assert r.returncode == EXIT_UNAUTHORIZED, r.stderr
        assert_no_secrets(r, wrong)
        if not debug:
            assert_refused(r, wrong)
    assert not (home / ".docker").exists()  # nothing stored after a refusal


def test_basic_pull_needs_credentials(
    registry_basic_tls: Registry, basic_image: str, home: Path
) -> None:
    assert registry_basic_tls.ca_file is not None
    r = imgpipe("pull", "--tls-ca", registry_basic_tls.ca_file, basic_image, home=home)
    assert_refused(r)
    assert "imgpipe login" in r.stderr or "credentials" in r.stderr


def test_basic_untrusted_certificate_is_refused(
    registry_basic_tls: Registry, basic_image: str, home: Path, tmp_path: Path
) -> None:
    auth = registry_basic_tls.auth_file(tmp_path)
    assert registry_basic_tls.password is not None
    r = imgpipe("pull", basic_image, home=home, env={"REGISTRY_AUTH_FILE": str(auth)})
    assert r.returncode == 13, r.stderr  # Unavailable: never a fallback to plain HTTP
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "certificate" in r.stderr
    assert_no_secrets(r, registry_basic_tls.password)


def test_basic_login_pull_push_logout(
    registry_basic_tls: Registry, basic_image: str, home: Path
) -> None:
    reg = registry_basic_tls
    assert reg.password is not None and reg.ca_file is not None
    r = login(reg, home, reg.password, debug=True)
    assert r.returncode == 0, r.stderr
    assert "Login Succeeded" in r.stdout
    assert_no_secrets(r, reg.password)
    config = home / ".docker" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert reg.host in json.loads(config.read_text())["auths"]

    r = imgpipe("--debug", "pull", "--tls-ca", reg.ca_file, basic_image, home=home)
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r, reg.password)
    pulled = r.stdout.split()[0]
    r = imgpipe(
        "--debug", "push", "--tls-ca", reg.ca_file, pulled, reg.ref("auth/pushed", "v2"), home=home
    )
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r, reg.password)
    assert reg.manifest_digest("auth/pushed", "v2") == reg.manifest_digest("auth/busybox", "v1")

    r = imgpipe("logout", reg.host, home=home)
    assert r.returncode == 0, r.stderr
    assert reg.host not in json.loads(config.read_text())["auths"]
    r = imgpipe("pull", "--tls-ca", reg.ca_file, basic_image, home=home, root=home / "root2")
    assert_refused(r)
    r = imgpipe("logout", reg.host, home=home)
    assert r.returncode == 0 and "Not logged in" in r.stdout


def test_basic_auth_file_flag_and_env(
    registry_basic_tls: Registry, basic_image: str, home: Path, tmp_path: Path
) -> None:
    reg = registry_basic_tls
    assert reg.password is not None and reg.ca_file is not None
    auth = tmp_path / "elsewhere" / "auth.json"
    r = login(reg, home, reg.password, "--auth-file", str(auth))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert not (home / ".docker").exists()
    r = imgpipe(
        "pull",
        "--tls-ca",
        reg.ca_file,
        basic_image,
        home=home,
        env={"REGISTRY_AUTH_FILE": str(auth)},
    )
    assert r.returncode == 0, r.stderr
    r = imgpipe(
        "pull",
        "--tls-ca",
        reg.ca_file,
        "--auth-file",
        auth,
        basic_image,
        home=home,
        root=home / "root-flag",
    )
    assert r.returncode == 0, r.stderr


# -- token auth ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_image(registry_token: Registry, fixture_dir: Path) -> str:
    registry_token.push_layout(fixture_dir / "layered", "layered", "tok/layered", "v1")
    return registry_token.ref("tok/layered", "v1")


def test_token_anonymous_pull(registry_token: Registry, token_image: str, home: Path) -> None:
    r = imgpipe("pull", token_image, home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == registry_token.manifest_digest("tok/layered", "v1")
    assert registry_token.token_server is not None
    anonymous = [t for t in registry_token.token_server.log if t.account == "" and t.status == 200]
    assert any("repository:tok/layered:pull" in " ".join(t.scopes) for t in anonymous)


def test_token_push_needs_login(registry_token: Registry, token_image: str, home: Path) -> None:
    assert registry_token.password is not None
    r = imgpipe("pull", token_image, home=home)
    assert r.returncode == 0, r.stderr
    name = r.stdout.split()[0]
    r = imgpipe("push", name, registry_token.ref("tok/anon-push", "v1"), home=home)
    assert_refused(r)

    r = login(registry_token, home, "wrong-" + registry_token.password)
    assert_refused(r, registry_token.password)

    r = login(registry_token, home, registry_token.password)
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r, registry_token.password)
    r = imgpipe("--debug", "push", name, registry_token.ref("tok/pushed", "v1"), home=home)
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r, registry_token.password)
    assert registry_token.manifest_digest("tok/pushed", "v1") == r.stdout.split()[-1]
    assert registry_token.token_server is not None
    pushes = [
        t
        for t in registry_token.token_server.log
        if t.account == registry_token.username and "push" in " ".join(t.scopes)
    ]
    assert pushes, "push did not ask the token server for a push scope as the user"

    r = imgpipe("logout", registry_token.host, home=home)
    assert r.returncode == 0
    r = imgpipe("push", name, registry_token.ref("tok/pushed-again", "v1"), home=home)
    assert_refused(r, registry_token.password)
