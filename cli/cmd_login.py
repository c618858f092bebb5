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
from typing import Any

from . import flags

DEFAULT_REGISTRY = "docker.io"


def register(sub: Any) -> None:
    p = flags.verb(sub, "login", login)
    p.add_argument("registry", metavar="REGISTRY", nargs="?", default=DEFAULT_REGISTRY)
    p.add_argument("-u", "--username", help="user name (prompted on a terminal if missing)")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("-p", "--password", help="password (insecure: prefer --password-stdin)")
    pw.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    flags.connection(p)

    p = flags.verb(sub, "logout", logout)
    p.add_argument("registry", metavar="REGISTRY", nargs="?", default=DEFAULT_REGISTRY)
    flags.auth_file(p)


def login(args: argparse.Namespace) -> int:
    """log in to a registry

    Check credentials against REGISTRY (default: docker.io) and store them in the Docker
    config file (~/.docker/config.json, $DOCKER_CONFIG, $REGISTRY_AUTH_FILE or --auth-file)
    or its credential helper.
    """
    import imgpipe

    from .main import usage_error

    host = imgpipe.registry_host(args.registry)
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
    path = imgpipe.login(host, username, password, options=flags.transport_options(args))
    if path is None:
        print(f"{host} asks for no credentials: nothing checked, nothing saved")
        return 0
    if not args.quiet:
        print(f"credentials for {host} saved in {path}", file=sys.stderr)
    print("Login Succeeded")
    return 0


def logout(args: argparse.Namespace) -> int:
    """forget a registry's credentials

    Remove the stored credentials for REGISTRY (default: docker.io).
    """
    import imgpipe

    host = imgpipe.registry_host(args.registry)
    if imgpipe.logout(host, auth_file=args.auth_file):
        print(f"Removed login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0
