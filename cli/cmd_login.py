"""``imgpipe login`` and ``imgpipe logout``: registry credentials in the Docker config file.

``login`` checks the credentials against the registry's ``/v2/`` (following its Basic or
Bearer challenge, exactly as a pull would) before it stores anything, so a typo is an
error now rather than a failed pull later. Credentials go where
:mod:`imgpipe.remote.credentials` says: the host's credential helper if the file names
one, else ``auths`` in the file (mode 0600). The password is read from ``--password-stdin``
or a terminal prompt; ``-p`` works but leaves it in the shell history and process table,
as ``docker login`` warns.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgpipe.remote.credentials import Credentials

DEFAULT_REGISTRY = "docker.io"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "login",
        help="log in to a registry",
        description="Check credentials against REGISTRY (default: docker.io) and store them "
        "in the Docker config file (~/.docker/config.json, $DOCKER_CONFIG, "
        "$REGISTRY_AUTH_FILE or --auth-file) or its credential helper.",
    )
    p.add_argument("registry", metavar="REGISTRY", nargs="?", default=DEFAULT_REGISTRY)
    p.add_argument("-u", "--username", help="user name (prompted on a terminal if missing)")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("-p", "--password", help="password (insecure: prefer --password-stdin)")
    pw.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _add_connection_flags(p)
    p.set_defaults(func=login)

    p = sub.add_parser(
        "logout",
        help="forget a registry's credentials",
        description="Remove the stored credentials for REGISTRY (default: docker.io).",
    )
    p.add_argument("registry", metavar="REGISTRY", nargs="?", default=DEFAULT_REGISTRY)
    p.add_argument("--auth-file", metavar="FILE", help="the Docker-format credentials file")
    p.set_defaults(func=logout)


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auth-file", metavar="FILE", help="the Docker-format credentials file")
    p.add_argument(
        "--plain-http", action="store_true", help="talk plain HTTP to the registry (no TLS)"
    )
    p.add_argument("--tls-ca", metavar="FILE", help="PEM CA certificates to trust as well")
    p.add_argument("--registry-config", metavar="FILE", help="registries.toml to read")


def _registry_host(arg: str) -> str:
    """``https://reg:5000/v2/`` or ``reg:5000`` -> ``reg:5000``; Hub aliases -> docker.io."""
    from imgpipe.remote.credentials import normalize_host

    return normalize_host(arg)


def login(args: argparse.Namespace) -> int:
    from imgpipe.errors import InvalidArgument
    from imgpipe.remote.credentials import Credentials, store

    from .main import usage_error

    host = _registry_host(args.registry)
    if not host:
        return usage_error("REGISTRY is empty")
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            return usage_error("give a user name with --username")
        username = input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif args.password is not None:
        print(
            "WARNING! Using --password on the command line is insecure; use --password-stdin.",
            file=sys.stderr,
        )
        password = args.password
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
    else:
        return usage_error("no password: use --password-stdin or a terminal")
    if not username or not password:
        raise InvalidArgument("user name and password must not be empty")
    creds = Credentials(username=username, password=password)
    check_credentials(
        host,
        creds,
        plain_http=args.plain_http,
        tls_ca=args.tls_ca,
        registry_config=args.registry_config,
    )
    path = store(host, creds, auth_file=args.auth_file)
    if not args.quiet:
        print(f"credentials for {host} saved in {path}", file=sys.stderr)
    print("Login Succeeded")
    return 0


def logout(args: argparse.Namespace) -> int:
    from imgpipe.remote.credentials import erase

    host = _registry_host(args.registry)
    if erase(host, auth_file=args.auth_file):
        print(f"Removed login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0


def check_credentials(
    host: str,
    creds: Credentials,
    *,
    plain_http: bool = False,
    tls_ca: str | None = None,
    registry_config: str | None = None,
) -> None:
    """``GET /v2/`` on ``host`` with ``creds``, answering its challenge; return if accepted.

    Raises Unauthorized when the registry or its token server refuses them, Unavailable
    when it cannot be reached. Uses the registry client's HTTP and auth code, so login
    succeeds exactly when a pull would authenticate.
    """
    from imgpipe.errors import Unauthorized, Unavailable
    from imgpipe.remote.auth import Authorizer
    from imgpipe.remote.hosts import load_registry_config
    from imgpipe.remote.http import HttpClient, NotTLS, read_limited
    from imgpipe.remote.options import DEFAULT_USER_AGENT

    config = load_registry_config(registry_config)
    # the registry itself, never a mirror: credentials are checked where they will be used
    endpoint = config.endpoints(host, push=True, plain_http=plain_http, tls_ca=tls_ca)[-1]
    http = HttpClient(user_agent=DEFAULT_USER_AGENT)
    try:
        auth = Authorizer(http, lambda h: creds if h == endpoint.host else None)
        last_error: Unavailable | None = None
        for scheme in endpoint.schemes:
            url = f"{scheme}://{endpoint.host}/v2/"
            try:
                resp = http.send("GET", url, ca=endpoint.ca)
            except NotTLS as e:
                last_error = e  # a plain-HTTP server: try the next scheme if allowed
                continue
            read_limited(resp, 64 << 10)
            if resp.status == 200:
                return  # the registry asks for nothing; Docker stores the credentials too
            if resp.status != 401:
                raise Unavailable(f"login to {host}: GET /v2/ answered HTTP {resp.status}")
            challenge = resp.headers.get("WWW-Authenticate", "")
            header = auth.challenge(endpoint.host, challenge, [], ca=endpoint.ca, what=host)
            resp = http.send("GET", url, headers={"Authorization": header}, ca=endpoint.ca)
            read_limited(resp, 64 << 10)
            if resp.status == 200:
                return
            if resp.status in (401, 403):
                raise Unauthorized(f"login to {host}: the registry refused the credentials")
            raise Unavailable(f"login to {host}: GET /v2/ answered HTTP {resp.status}")
        assert last_error is not None
        raise last_error
    finally:
        http.close()
