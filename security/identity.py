"""Workload identities: SPIFFE IDs of the form ``spiffe://<trust-domain>/<role>/<name>``.

Gridfort uses a strict subset of the SPIFFE ID grammar (SPIFFE-ID.md): exactly
two path segments, the first a known :class:`Role`, the second a name of
1..64 characters from ``[A-Za-z0-9._-]`` that contains no ``..``. Parsing is
hand-written rather than delegated to ``urllib.parse`` so that every rejected
input gets a precise reason and no URI quirk (ports, userinfo, percent
escapes, uppercase schemes) is silently normalised into an identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

#: SPIFFE limits a SPIFFE ID to 2048 bytes; the trust domain to 255.
MAX_SPIFFE_ID_LEN = 2048
MAX_TRUST_DOMAIN_LEN = 255
MAX_NAME_LEN = 64
SCHEME_PREFIX = "spiffe://"

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


class Role(StrEnum):
    """What a workload is; the first path segment of its SPIFFE ID."""

    EDGE = "edge"
    CONTROL_PLANE = "control-plane"
    OPERATOR = "operator"
    SOC = "soc"


_ROLE_LIST = ", ".join(r.value for r in Role)


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` unchanged if it is a valid SPIFFE trust domain, else ValueError."""
    if not isinstance(trust_domain, str) or not trust_domain:
        raise ValueError("trust domain is empty")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LEN:
        raise ValueError(f"trust domain is longer than {MAX_TRUST_DOMAIN_LEN} characters")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain[:80]!r} may contain only lowercase letters, digits, "
            "'.', '-' and '_'"
        )
    return trust_domain


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it is a valid workload name (site id...), else ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError("workload name is empty")
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"workload name is longer than {MAX_NAME_LEN} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"workload name {name[:80]!r} may contain only letters, digits, '.', '-' and '_'"
        )
    if name == "." or ".." in name:
        raise ValueError(f"workload name {name!r} must not be '.' or contain '..'")
    return name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated Gridfort SPIFFE ID. Cannot exist invalid."""

    trust_domain: str
    role: Role
    name: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if not isinstance(self.role, Role):
            try:
                role = Role(self.role)
            except ValueError:
                raise ValueError(
                    f"unknown role {self.role!r} (expected one of {_ROLE_LIST})"
                ) from None
            object.__setattr__(self, "role", role)
        validate_name(self.name)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://<domain>/<role>/<name>``; ValueError says exactly what is wrong."""
        if not isinstance(uri, str):
            raise ValueError(f"SPIFFE ID must be a string, not {type(uri).__name__}")
        if len(uri) > MAX_SPIFFE_ID_LEN:
            raise ValueError(f"SPIFFE ID is too long ({len(uri)} > {MAX_SPIFFE_ID_LEN} characters)")
        if not uri:
            raise ValueError("SPIFFE ID is empty")
        if not uri.startswith(SCHEME_PREFIX):
            scheme, sep, _ = uri.partition("://")
            if sep and scheme.lower() == "spiffe":
                raise ValueError(f"SPIFFE ID scheme must be lowercase 'spiffe', not {scheme!r}")
            if sep:
                raise ValueError(
                    f"wrong scheme {scheme[:32]!r}: a SPIFFE ID starts with 'spiffe://'"
                )
            raise ValueError("missing scheme: a SPIFFE ID starts with 'spiffe://'")
        rest = uri[len(SCHEME_PREFIX) :]
        if "#" in rest:
            raise ValueError("SPIFFE ID must not contain a fragment ('#')")
        if "?" in rest:
            raise ValueError("SPIFFE ID must not contain a query ('?')")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            raise ValueError("SPIFFE ID must not contain userinfo ('@')")
        if ":" in authority:
            raise ValueError("SPIFFE ID must not contain a port (':')")
        if not authority:
            raise ValueError("SPIFFE ID has no trust domain")
        trust_domain = validate_trust_domain(authority)
        if not slash or not path:
            raise ValueError("SPIFFE ID has no path: expected /<role>/<name>")
        segments = path.split("/")
        if len(segments) < 2:
            raise ValueError("SPIFFE ID path is too short: expected /<role>/<name>")
        if len(segments) > 2:
            if segments[2:] == [""]:
                raise ValueError("SPIFFE ID must not end with '/'")
            raise ValueError(
                f"SPIFFE ID has {len(segments)} path segments: expected exactly /<role>/<name>"
            )
        role_segment, name = segments
        try:
            role = Role(role_segment)
        except ValueError:
            raise ValueError(
                f"unknown role segment {role_segment[:64]!r} (expected one of {_ROLE_LIST})"
            ) from None
        return cls(trust_domain=trust_domain, role=role, name=validate_name(name))

    @property
    def uri(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}/{self.role.value}/{self.name}"

    def __str__(self) -> str:
        return self.uri


def trust_domain_uri(trust_domain: str) -> str:
    """``spiffe://<domain>``: the SPIFFE ID of a trust domain itself (used on CA certificates)."""
    return SCHEME_PREFIX + validate_trust_domain(trust_domain)


def spiffe_id_from_certificate(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an X509-SVID: its one and only URI SAN. ValueError otherwise."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no subjectAltName extension") from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise ValueError(f"certificate extensions are malformed ({type(e).__name__})") from None
    if len(uris) != 1:
        raise ValueError(f"certificate must have exactly one URI SAN, found {len(uris)}")
    return SpiffeId.parse(uris[0])


def control_plane_dns_name(trust_domain: str) -> str:
    """The DNS name every edge verifies on the control plane's TLS certificate.

    The CA issues DNS names only to control-plane identities, so a handshake
    that verifies this name proves the server is a control plane of the domain.
    """
    return f"control-plane.{validate_trust_domain(trust_domain)}"
