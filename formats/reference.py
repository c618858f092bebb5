"""Image references (Docker's grammar) and transport strings (skopeo's).

References follow Docker's distribution grammar and normalisation::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]          host: DNS name, or [IPv6]
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

The first ``/``-separated part is a domain only if it contains ``.`` or ``:``, is
``localhost``, or has uppercase letters (a path never does); otherwise the domain is
``docker.io``. On docker.io a one-component path gets ``library/``; ``index.docker.io``
is spelled ``docker.io``. A reference with neither tag nor digest gets the tag
``latest``. The whole name is at most 255 characters, and a bare 64-hex string is
refused (it would be an image ID, not a name).

Transports (as skopeo and containers/image parse them)::

    docker://REF                 a registry reference
    oci:DIR[:TAG]                an OCI layout directory; TAG is a ref.name annotation
    oci-archive:FILE[:TAG]       a tar of an OCI layout
    docker-archive:FILE[:REF]    a ``docker save`` tar; REF is a tagged name inside it
    REF                          anything else is a registry reference

The path ends at the first ``:`` after the transport, so a path cannot contain ``:``
(as in skopeo on Linux). Only these four prefixes are transports: ``localhost:5000/a``
and ``docker:5000/a`` (a host named docker) are registry references.
"""

from __future__ import annotations

import re
from typing import Final

from ._record import NOT_GIVEN, Record, _set
from .digest import Digest
from .errors import InvalidDigest, InvalidReference

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "TRANSPORTS",
    "Reference",
    "TransportRef",
    "parse_reference",
    "parse_transport",
]

DEFAULT_DOMAIN: Final = "docker.io"
DEFAULT_TAG: Final = "latest"
#: Docker Hub's old name, rewritten to DEFAULT_DOMAIN.
LEGACY_DEFAULT_DOMAIN: Final = "index.docker.io"
OFFICIAL_REPO_PREFIX: Final = "library/"
#: The longest ``domain/path`` Docker accepts.
NAME_MAX_LENGTH: Final = 255
TRANSPORTS: Final = ("docker", "oci", "oci-archive", "docker-archive")

_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE: Final = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE: Final = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE: Final = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_IMAGE_ID_RE: Final = re.compile(r"[a-f0-9]{64}")
# What an OCI layout's ref.name may be (containers/image's check on ``oci:DIR:NAME``).
_OCI_NAME_COMPONENT: Final = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
# compiled on first use (re's cache): only oci: and oci-archive: names need it
_OCI_NAME_RE: Final = rf"{_OCI_NAME_COMPONENT}(?:/{_OCI_NAME_COMPONENT})*"


class Reference(Record):
    """A normalised registry reference: ``domain/path[:tag][@digest]``.

    Construct with :func:`parse_reference`; direct construction validates the parts
    (InvalidReference) but does not normalise them. A frozen value: equal and hashed by
    its four fields.
    """

    __slots__ = ("digest", "domain", "path", "tag")
    __match_args__ = ("domain", "path", "tag", "digest")
    _fields = __match_args__

    domain: str
    path: str
    tag: str
    digest: Digest | None

    def __init__(self, domain: str, path: str, tag: str = "", digest: Digest | None = None) -> None:
        if not _DOMAIN_RE.fullmatch(domain):
            raise InvalidReference(f"invalid registry domain {domain!r}")
        if not _PATH_RE.fullmatch(path):
            raise InvalidReference(f"invalid repository path {path!r}")
        if tag and not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        if digest is not None and not isinstance(digest, Digest):
            raise InvalidReference(f"digest must be a Digest, not {type(digest).__name__}")
        name = f"{domain}/{path}"
        if len(name) > NAME_MAX_LENGTH:
            raise InvalidReference(
                f"repository name {name!r} is longer than {NAME_MAX_LENGTH} characters"
            )
        _set(self, "domain", domain)
        _set(self, "path", path)
        _set(self, "tag", tag)
        _set(self, "digest", digest)

    def replace(
        self,
        *,
        domain: str = NOT_GIVEN,
        path: str = NOT_GIVEN,
        tag: str = NOT_GIVEN,
        digest: Digest | None = NOT_GIVEN,
    ) -> Reference:
        """A copy with the given parts changed, validated as a new reference is (not
        normalised)."""
        return self._replaced(domain=domain, path=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``domain/path``, the repository's full name."""
        return f"{self.domain}/{self.path}"

    def _suffix(self) -> str:
        tag = self.tag or ("" if self.digest is not None else DEFAULT_TAG)
        s = f":{tag}" if tag else ""
        return f"{s}@{self.digest}" if self.digest is not None else s

    def __str__(self) -> str:
        """``name[:tag][@digest]``; ``:latest`` only when neither tag nor digest is set."""
        return self.name + self._suffix()

    def familiar(self) -> str:
        """Docker's short form: ``alpine:latest``, ``user/app:1``, ``quay.io/a/b:2``.

        Unlike Docker's, it always parses back to the same reference: a Docker Hub path
        whose first component looks like a host (``docker.io/a.b/c``) keeps its domain.
        """
        if self.domain != DEFAULT_DOMAIN:
            return str(self)
        path = self.path
        rest = path.removeprefix(OFFICIAL_REPO_PREFIX)
        if rest != path and "/" not in rest:
            path = rest
        elif _split_domain(path)[0] != DEFAULT_DOMAIN:
            # "a.b/c" on Docker Hub: dropping docker.io would make "a.b" read as a host.
            return str(self)
        return path + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        return Reference(self.domain, self.path, tag)

    def with_digest(self, digest: Digest) -> Reference:
        """The same repository pinned to ``digest`` (the tag is kept, for display)."""
        return Reference(self.domain, self.path, self.tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str) -> Reference:
    """Parse and normalise a registry reference (grammar in the module docstring).

    ``alpine`` -> ``docker.io/library/alpine:latest``; ``user/app`` ->
    ``docker.io/user/app:latest``; ``127.0.0.1:5000/x@sha256:...`` keeps no tag.
    Raises InvalidReference saying which part is wrong.
    """
    if not isinstance(text, str):
        raise InvalidReference(f"reference must be a string, not {type(text).__name__}")
    if not text:
        raise InvalidReference("empty image reference")
    if _IMAGE_ID_RE.fullmatch(text):
        raise InvalidReference(
            f"invalid reference {text!r}: a 64-hex string is an image ID, not a repository name"
        )
    name_tag, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest as e:
            raise InvalidReference(f"invalid reference {text!r}: {e}") from None
    name, tag = name_tag, ""
    colon = name_tag.rfind(":")
    if colon > name_tag.rfind("/"):
        name, tag = name_tag[:colon], name_tag[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(
                f"invalid reference {text!r}: tag {tag!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]"
                "{0,127}"
            )
    if not name:
        raise InvalidReference(f"invalid reference {text!r}: missing repository name")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidReference(f"invalid reference {text!r}: invalid registry {domain!r}")
    if path.lower() != path:
        raise InvalidReference(
            f"invalid reference {text!r}: repository name {path!r} must be lowercase"
        )
    if not _PATH_RE.fullmatch(path):
        raise InvalidReference(
            f"invalid reference {text!r}: repository name {path!r} must be lowercase "
            "components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'"
        )
    if not tag and digest is None:
        tag = DEFAULT_TAG
    try:
        return Reference(domain, path, tag, digest)
    except InvalidReference as e:
        raise InvalidReference(f"invalid reference {text!r}: {e}") from None


class TransportRef(Record):
    """Where an image lives: a registry, an OCI layout (dir or tar), or a docker-save tar.

    ``path`` is the filesystem path for ``oci``, ``oci-archive`` and ``docker-archive``.
    ``tag`` is, for ``oci``/``oci-archive``, the ``org.opencontainers.image.ref.name`` to
    read or write ("" = the only image when reading, no name when writing); for
    ``docker-archive``, the image name inside the tar as given ("" = the only one), with
    its parsed form in ``reference``. For ``docker``, ``reference`` is the image. A frozen
    value, as :class:`Reference` is.
    """

    __slots__ = ("path", "reference", "tag", "transport")
    __match_args__ = ("transport", "path", "tag", "reference")
    _fields = __match_args__

    transport: str
    path: str
    tag: str
    reference: Reference | None

    def __init__(
        self, transport: str, path: str = "", tag: str = "", reference: Reference | None = None
    ) -> None:
        if transport not in TRANSPORTS:
            raise InvalidReference(
                f"unknown transport {transport!r} (want one of {', '.join(TRANSPORTS)})"
            )
        if transport == "docker":
            if reference is None:
                raise InvalidReference("docker transport needs a reference")
        elif not path:
            raise InvalidReference(f"{transport} transport needs a path")
        elif ":" in path:
            raise InvalidReference(f"{transport} path {path!r} must not contain ':'")
        _set(self, "transport", transport)
        _set(self, "path", path)
        _set(self, "tag", tag)
        _set(self, "reference", reference)

    def replace(
        self,
        *,
        transport: str = NOT_GIVEN,
        path: str = NOT_GIVEN,
        tag: str = NOT_GIVEN,
        reference: Reference | None = NOT_GIVEN,
    ) -> TransportRef:
        """A copy with the given fields changed, validated as a new one is."""
        return self._replaced(transport=transport, path=path, tag=tag, reference=reference)

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.reference}"
        s = f"{self.transport}:{self.path}"
        return f"{s}:{self.tag}" if self.tag else s


def _path_and_tag(transport: str, rest: str, text: str) -> tuple[str, str]:
    path, _, tag = rest.partition(":")
    if not path:
        raise InvalidReference(f"invalid {transport} reference {text!r}: missing path")
    if tag.startswith("@"):
        raise InvalidReference(
            f"invalid {transport} reference {text!r}: selecting an image by index (@N) is "
            "not supported; name it by tag"
        )
    return path, tag


def parse_transport(text: str) -> TransportRef:
    """Parse a transport string (forms in the module docstring); InvalidReference if bad."""
    if not isinstance(text, str):
        raise InvalidReference(f"image must be a string, not {type(text).__name__}")
    if text.startswith("docker://"):
        return TransportRef("docker", reference=parse_reference(text.removeprefix("docker://")))
    for transport in ("oci", "oci-archive"):
        prefix = transport + ":"
        if text.startswith(prefix):
            path, tag = _path_and_tag(transport, text.removeprefix(prefix), text)
            if tag and not re.fullmatch(_OCI_NAME_RE, tag):
                raise InvalidReference(
                    f"invalid {transport} reference {text!r}: image name {tag!r} must be "
                    "alphanumerics joined by '-', '.', '_', ':', '@', '+' or '/'"
                )
            return TransportRef(transport, path=path, tag=tag)
    if text.startswith("docker-archive:"):
        path, name = _path_and_tag("docker-archive", text.removeprefix("docker-archive:"), text)
        if not name:
            return TransportRef("docker-archive", path=path)
        ref = parse_reference(name)
        if ref.digest is not None:
            raise InvalidReference(
                f"invalid docker-archive reference {text!r}: the image inside must be named "
                "by tag, not digest"
            )
        return TransportRef("docker-archive", path=path, tag=name, reference=ref)
    try:
        return TransportRef("docker", reference=parse_reference(text))
    except InvalidReference as e:
        if text.startswith("docker:"):
            # Most likely a mistyped transport rather than a host named "docker".
            raise InvalidReference(f"{e} (the docker transport is written docker://REF)") from None
        raise
