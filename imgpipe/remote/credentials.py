"""Registry credentials from the Docker config file and credential helpers.

Where the file is (the first that applies): the ``auth_file`` argument (``--auth-file``),
``$REGISTRY_AUTH_FILE`` (the containers tools' variable, same format),
``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``. A missing file means no
credentials. The parts of it we use::

    {
      "auths": {"registry.example.com": {"auth": "<base64 user:password>"},
                "https://index.docker.io/v1/": {"auth": "...", "identitytoken": "..."}},
      "credHelpers": {"gcr.io": "gcloud"},     # docker-credential-gcloud for that host
      "credsStore": "pass"                     # docker-credential-pass for every other host
    }

Lookup order for a host: its ``credHelpers`` helper, else the ``credsStore`` helper, else
the ``auths`` entry. When a helper has nothing for the host, the ``auths`` entry is still
used (as the containers tools do), so a file written before a helper was configured keeps
working.

Host names are compared after normalisation: the scheme and any path are dropped, and
Docker Hub's aliases (``https://index.docker.io/v1/``, ``index.docker.io``,
``registry-1.docker.io``, ``docker.io``) are one host. Docker Hub entries are written under
``https://index.docker.io/v1/`` and its helper is asked with that URL, as the Docker CLI
does, so both tools share the file.

Helpers follow the docker-credential-helpers protocol: ``docker-credential-NAME get`` with
the server URL on stdin prints ``{"ServerURL", "Username", "Secret"}``; a username of
``<token>`` means the secret is an identity (refresh) token. ``store`` reads that JSON on
stdin; ``erase`` reads the server URL.

Errors: a file that is not the JSON described is :class:`MalformedDocument`; a helper that
is missing or fails is :class:`Unauthorized` with the helper's own message. Secrets never
appear in messages or reprs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from imgpipe.formats.errors import MalformedDocument, Unauthorized

if TYPE_CHECKING:
    import subprocess

__all__ = [
    "DOCKER_HUB_SERVER_URL",
    "HELPER_TIMEOUT",
    "Credentials",
    "config_path",
    "erase",
    "lookup",
    "normalize_host",
    "store",
]

#: The key Docker uses for Docker Hub in ``auths`` and with helpers.
DOCKER_HUB_SERVER_URL: Final = "https://index.docker.io/v1/"
_DOCKER_HUB: Final = "docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
#: Seconds a credential helper may take; keychain helpers may wait on an unlock prompt.
HELPER_TIMEOUT: Final = 60.0
#: Longest helper message we repeat in an error; helpers can be chatty.
_MAX_HELPER_MESSAGE: Final = 300
_TOKEN_USERNAME: Final = "<token>"  # noqa: S105 - docker-credential-helpers' marker for identity tokens
_FILE_MODE: Final = 0o600  # the file holds passwords
_DIR_MODE: Final = 0o700


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password, or an identity token (an OAuth2 refresh token).

    ``repr`` shows only the username, so a credential in a log or traceback leaks nothing.
    """

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        secret = "identity_token=***" if self.identity_token else "password=***"
        return f"Credentials(username={self.username!r}, {secret})"

    __str__ = __repr__


def normalize_host(host: str) -> str:
    """The registry host a config key or a reference domain names, for comparisons.

    ``https://index.docker.io/v1/`` -> ``docker.io``; ``http://reg:5000/v2`` -> ``reg:5000``.
    """
    h = host.strip()
    if "://" in h:
        h = h.split("://", 1)[1]
    h = h.split("/", 1)[0].lower()
    return _DOCKER_HUB if h in _DOCKER_HUB_ALIASES else h


def _server_url(host: str) -> str:
    """What helpers are asked with and ``auths`` is keyed by for ``host``."""
    h = normalize_host(host)
    return DOCKER_HUB_SERVER_URL if h == _DOCKER_HUB else h


def config_path(auth_file: str | os.PathLike[str] | None = None) -> Path:
    """The Docker config file in effect (see the module docstring for the order)."""
    if auth_file:
        return Path(auth_file)
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    docker_config = os.environ.get("DOCKER_CONFIG")
    if docker_config:
        return Path(docker_config) / "config.json"
    return Path.home() / ".docker" / "config.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedDocument(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise MalformedDocument(f"{path}: expected a JSON object")
    for key in ("auths", "credHelpers"):
        if key in doc and not isinstance(doc[key], dict):
            raise MalformedDocument(f"{path}: {key!r} must be an object")
    if "credsStore" in doc and not isinstance(doc["credsStore"], str):
        raise MalformedDocument(f"{path}: 'credsStore' must be a string")
    return doc


def _helper_for(doc: dict[str, Any], host: str) -> str | None:
    helpers: dict[str, Any] = doc.get("credHelpers", {})
    for key, name in helpers.items():
        if normalize_host(key) == host and isinstance(name, str) and name:
            return name
    store_name = doc.get("credsStore")
    return store_name or None


def _auth_entry(doc: dict[str, Any], host: str) -> tuple[str, dict[str, Any]] | None:
    auths: dict[str, Any] = doc.get("auths", {})
    for key, entry in auths.items():
        if normalize_host(key) == host and isinstance(entry, dict):
            return key, entry
    return None


def _decode_entry(path: Path, key: str, entry: dict[str, Any]) -> Credentials | None:
    username, password = str(entry.get("username", "")), str(entry.get("password", ""))
    auth = entry.get("auth")
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise MalformedDocument(f"{path}: 'auth' for {key!r} is not base64") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise MalformedDocument(f"{path}: 'auth' for {key!r} is not user:password")
    token = str(entry.get("identitytoken", ""))
    if not (username or password or token):
        return None
    return Credentials(username=username, password=password, identity_token=token)


def lookup(host: str, *, auth_file: str | os.PathLike[str] | None = None) -> Credentials | None:
    """The credentials configured for registry ``host`` (``host[:port]``), or None.

    Raises :class:`MalformedDocument` for a broken config file and :class:`Unauthorized`
    when a configured helper is missing or fails. Never prompts.
    """
    path = config_path(auth_file)
    doc = _load(path)
    h = normalize_host(host)
    helper = _helper_for(doc, h)
    if helper is not None:
        creds = _helper_get(helper, _server_url(h))
        if creds is not None:
            return creds
    found = _auth_entry(doc, h)
    if found is None:
        return None
    return _decode_entry(path, *found)


def store(
    host: str, creds: Credentials, *, auth_file: str | os.PathLike[str] | None = None
) -> Path:
    """Save ``creds`` for ``host``: to its helper if one is configured, else into ``auths``.

    The file is replaced atomically with mode 0600 (its directory is created 0700), and
    other entries and keys are kept. Returns the config file's path.
    """
    path = config_path(auth_file)
    doc = _load(path)
    h = normalize_host(host)
    helper = _helper_for(doc, h)
    auths: dict[str, Any] = doc.setdefault("auths", {})
    for key in [k for k in auths if normalize_host(k) == h]:
        del auths[key]
    if helper is not None:
        _helper_store(helper, _server_url(h), creds)
        # Docker keeps an empty entry so `docker login` lists the host; harmless, and
        # it tells a reader of the file where the secret went
        auths[_server_url(h)] = {}
    else:
        entry: dict[str, str] = {}
        if creds.username or creds.password:
            entry["auth"] = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        if creds.identity_token:
            entry["identitytoken"] = creds.identity_token
        auths[_server_url(h)] = entry
    _write_atomic(path, doc)
    return path


def erase(host: str, *, auth_file: str | os.PathLike[str] | None = None) -> bool:
    """Forget the credentials for ``host`` in the file and its helper. True if any were."""
    path = config_path(auth_file)
    doc = _load(path)
    h = normalize_host(host)
    removed = False
    helper = _helper_for(doc, h)
    if helper is not None:
        removed = _helper_erase(helper, _server_url(h))
    auths: dict[str, Any] = doc.get("auths", {})
    keys = [k for k in auths if normalize_host(k) == h]
    for key in keys:
        del auths[key]
    if keys:
        _write_atomic(path, doc)
    return removed or bool(keys)


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=_DIR_MODE, parents=True)
    data = (json.dumps(doc, indent="\t") + "\n").encode()
    # mkstemp creates the file 0600 before a byte is written: no window where it is
    # readable by others, whatever the umask
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- credential helpers --------------------------------------------------------------------


def _run_helper(name: str, action: str, stdin: str) -> subprocess.CompletedProcess[str]:
    import subprocess  # noqa: PLC0415 (1.5 ms at start-up: only when a helper is run)

    program = f"docker-credential-{name}"
    exe = shutil.which(program)
    if exe is None:
        raise Unauthorized(f"credential helper {program} is not installed (not on PATH)")
    try:
        return subprocess.run(
            [exe, action],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unauthorized(
            f"credential helper {program} {action} did not answer in {HELPER_TIMEOUT:g}s"
        ) from None


def _helper_message(proc: subprocess.CompletedProcess[str]) -> str:
    # helpers print their errors on stdout (the Go library's convention) or stderr
    text = " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
    return text[:_MAX_HELPER_MESSAGE] or f"exit status {proc.returncode}"


def _is_not_found(proc: subprocess.CompletedProcess[str]) -> bool:
    return "credentials not found" in (proc.stdout + proc.stderr).lower()


def _helper_get(name: str, server_url: str) -> Credentials | None:
    proc = _run_helper(name, "get", server_url)
    if proc.returncode != 0:
        if _is_not_found(proc):
            return None
        raise Unauthorized(f"credential helper docker-credential-{name}: {_helper_message(proc)}")
    try:
        doc = json.loads(proc.stdout)
        username, secret = str(doc.get("Username", "")), str(doc.get("Secret", ""))
    except (ValueError, AttributeError):
        # never echo the output: it may be a secret in the wrong shape
        raise Unauthorized(
            f"credential helper docker-credential-{name} printed something other than JSON"
        ) from None
    if not (username or secret):
        return None
    if username == _TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


def _helper_store(name: str, server_url: str, creds: Credentials) -> None:
    if creds.identity_token:
        username, secret = _TOKEN_USERNAME, creds.identity_token
    else:
        username, secret = creds.username, creds.password
    payload = json.dumps({"ServerURL": server_url, "Username": username, "Secret": secret})
    proc = _run_helper(name, "store", payload)
    if proc.returncode != 0:
        raise Unauthorized(f"credential helper docker-credential-{name}: {_helper_message(proc)}")


def _helper_erase(name: str, server_url: str) -> bool:
    proc = _run_helper(name, "erase", server_url)
    if proc.returncode == 0:
        return True
    if _is_not_found(proc):
        return False
    raise Unauthorized(f"credential helper docker-credential-{name}: {_helper_message(proc)}")
