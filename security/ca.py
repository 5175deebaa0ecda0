"""The certificate authority of one trust domain: a root and an issuing (intermediate) CA.

Both keys are ECDSA P-256 and live in one directory (mode 0700), each key file
mode 0600, created with that mode (never chmod-ed after the secret is on disk)
and replaced atomically (:func:`write_bytes_atomic`, re-exported here). Leaf
certificates are X509-SVIDs: the SPIFFE ID is the only URI SAN, and everything
the CSR asks for except its public key is ignored.

Files in the CA directory::

    root.key.pem       PKCS#8 PEM, 0600        root.cert.pem       self-signed root
    issuing.key.pem    PKCS#8 PEM, 0600        issuing.cert.pem    signed by the root

Times are Unix epoch milliseconds [ms]; X.509 stores whole seconds, so a
certificate's ``notBefore`` is the issuing time rounded *down* to the second.
Rounding down matters: revocation compares revocation time with ``notBefore``,
and a rounded-up ``notBefore`` could let a certificate issued just before a
revocation look newer than it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.atomic_files import write_bytes_atomic as write_bytes_atomic
from security.clock import Clock
from security.identity import Role, SpiffeId, trust_domain_uri, validate_trust_domain
from security.refusals import ConfigError, GridfortError, Reason, Refusal, RefusedError

ROOT_KEY_FILE = "root.key.pem"
ROOT_CERT_FILE = "root.cert.pem"
ISSUING_KEY_FILE = "issuing.key.pem"
ISSUING_CERT_FILE = "issuing.cert.pem"
_CA_FILES = (ROOT_KEY_FILE, ROOT_CERT_FILE, ISSUING_KEY_FILE, ISSUING_CERT_FILE)

#: A P-256 CSR is a few hundred bytes; anything much larger is not one of ours.
MAX_CSR_BYTES = 16 * 1024
_ALLOWED_CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

_Corrupt = Callable[[str], GridfortError]


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate as issued, with its chain (leaf PEM + issuing CA PEM)."""

    certificate: x509.Certificate
    chain_pem: bytes
    spiffe_id: SpiffeId
    serial: int
    not_before_ms: int
    not_after_ms: int


# -- files ---------------------------------------------------------------------------------------


def private_key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """PKCS#8 PEM, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: CertificateIssuerPrivateKeyTypes) -> None:
    """Write ``key`` as PKCS#8 PEM to ``path``, mode 0600, atomically."""
    write_bytes_atomic(path, private_key_pem(key), 0o600)


# -- keys and CSRs -------------------------------------------------------------------------------


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(private_key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """A DER CSR with an empty subject, signed by ``private_key`` (proof of possession).

    The CA decides every name in the certificate, so the CSR carries only the key.
    """
    algorithm: hashes.SHA256 | None = hashes.SHA256()
    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        algorithm = None
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(private_key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.DER)


def verify_csr(csr_der: bytes, *, identity: str = "") -> ec.EllipticCurvePublicKey:
    """The CSR's public key, after checking its self-signature and that the key is P-256.

    Raises RefusedError(Reason.CSR_INVALID) with a message that says what is wrong.
    """

    def refuse(message: str) -> RefusedError:
        return RefusedError(Refusal(Reason.CSR_INVALID, message, identity=identity))

    if not isinstance(csr_der, bytes | bytearray | memoryview):
        raise refuse("CSR must be DER bytes")
    if len(csr_der) > MAX_CSR_BYTES:
        raise refuse(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_der_x509_csr(bytes(csr_der))
    except ValueError:
        raise refuse("CSR is not a DER-encoded PKCS#10 request") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise refuse("CSR public key cannot be parsed") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise refuse(f"CSR key must be ECDSA P-256, got {_describe_key(public_key)}")
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise refuse(f"CSR key must be ECDSA P-256, got ECDSA {public_key.curve.name}")
    try:
        hash_algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise refuse("CSR signature algorithm is not supported") from None
    if not isinstance(hash_algorithm, _ALLOWED_CSR_HASHES):
        name = hash_algorithm.name if hash_algorithm is not None else "none"
        raise refuse(f"CSR signature hash must be SHA-256/384/512, got {name}")
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        signature_ok = False
    if not signature_ok:
        raise refuse("CSR signature does not verify (no proof of possession of the key)")
    return public_key


def _describe_key(public_key: object) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(public_key).__name__.removeprefix("_")


# -- the authority -------------------------------------------------------------------------------


def _datetime(ts_s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts_s, tz=dt.UTC)


def _epoch_s(when: dt.datetime) -> int:
    return int(when.timestamp())


def _ski(public_key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gridfort"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _validate_dns_name(name: str) -> str:
    labels = name.split(".") if isinstance(name, str) else []
    if not labels or len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(lb) for lb in labels):
        raise ValueError(f"invalid DNS name {str(name)[:80]!r}")
    return name


class CertificateAuthority:
    """Issues X509-SVIDs for one trust domain. Build with :meth:`init` or :meth:`load`."""

    def __init__(
        self,
        *,
        directory: Path,
        trust_domain: str,
        clock: Clock,
        root_certificate: x509.Certificate,
        issuing_key: ec.EllipticCurvePrivateKey,
        issuing_certificate: x509.Certificate,
    ) -> None:
        self._directory = directory
        self._trust_domain = trust_domain
        self._clock = clock
        self._root_certificate = root_certificate
        self._issuing_key = issuing_key
        self._issuing_certificate = issuing_certificate
        self._issuing_aki = _aki(issuing_certificate)
        self._issuing_not_after_s = _epoch_s(issuing_certificate.not_valid_after_utc)

    # construction ------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        trust_domain: str,
        clock: Clock,
        *,
        root_ttl_s: int = 10 * 365 * 86400,
        issuing_ttl_s: int = 365 * 86400,
    ) -> CertificateAuthority:
        """Create a new root and issuing CA in ``directory``; refuse if a CA is already there."""
        try:
            validate_trust_domain(trust_domain)
        except ValueError as e:
            raise ConfigError(f"trust_domain: {e}") from None
        if root_ttl_s < 1 or issuing_ttl_s < 1:
            raise ConfigError("CA lifetimes (root_ttl_s, issuing_ttl_s) must be at least 1 s")
        directory = Path(directory)
        _prepare_directory(directory)

        now_s = clock.now_ms() // 1000
        root_not_after_s = now_s + root_ttl_s
        issuing_not_after_s = min(now_s + issuing_ttl_s, root_not_after_s)
        san = x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(trust_domain_uri(trust_domain))]
        )

        root_key = generate_private_key()
        root_name = _ca_name("Gridfort root CA")
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(_random_serial())
            .not_valid_before(_datetime(now_s))
            .not_valid_after(_datetime(root_not_after_s))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(_ski(root_key.public_key()), critical=False)
            .add_extension(san, critical=False)
            .sign(root_key, hashes.SHA256())
        )

        issuing_key = generate_private_key()
        issuing_cert = (
            x509.CertificateBuilder()
            .subject_name(_ca_name("Gridfort issuing CA"))
            .issuer_name(root_name)
            .public_key(issuing_key.public_key())
            .serial_number(_random_serial())
            .not_valid_before(_datetime(now_s))
            .not_valid_after(_datetime(issuing_not_after_s))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(_ski(issuing_key.public_key()), critical=False)
            .add_extension(_aki(root_cert), critical=False)
            .add_extension(san, critical=False)
            .sign(root_key, hashes.SHA256())
        )

        # Certificates last: a directory with keys but no certificates is "corrupt", never "valid".
        write_private_key(directory / ROOT_KEY_FILE, root_key)
        write_private_key(directory / ISSUING_KEY_FILE, issuing_key)
        pem = serialization.Encoding.PEM
        write_bytes_atomic(directory / ROOT_CERT_FILE, root_cert.public_bytes(pem), 0o644)
        write_bytes_atomic(directory / ISSUING_CERT_FILE, issuing_cert.public_bytes(pem), 0o644)
        return cls(
            directory=directory,
            trust_domain=trust_domain,
            clock=clock,
            root_certificate=root_cert,
            issuing_key=issuing_key,
            issuing_certificate=issuing_cert,
        )

    @classmethod
    def load(cls, directory: Path, clock: Clock) -> CertificateAuthority:
        """Load the CA in ``directory``, checking file permissions and that the pieces fit."""
        directory = Path(directory)
        if not directory.is_dir():
            raise GridfortError(f"no CA at {directory}: the directory does not exist")
        missing = [name for name in _CA_FILES if not (directory / name).is_file()]
        if missing:
            raise GridfortError(f"CA at {directory} is incomplete: missing {', '.join(missing)}")
        dir_mode = directory.stat().st_mode & 0o777
        if dir_mode & 0o022:
            raise GridfortError(
                f"CA directory {directory} is writable by group or others (mode {dir_mode:04o}); "
                f"run: chmod 700 {directory}"
            )
        for name in (ROOT_KEY_FILE, ISSUING_KEY_FILE):
            _check_key_file(directory / name)

        def corrupt(what: str) -> GridfortError:
            return GridfortError(f"CA at {directory} is corrupt: {what}")

        root_key = _load_key(directory / ROOT_KEY_FILE, corrupt)
        issuing_key = _load_key(directory / ISSUING_KEY_FILE, corrupt)
        root_cert = _load_cert(directory / ROOT_CERT_FILE, corrupt)
        issuing_cert = _load_cert(directory / ISSUING_CERT_FILE, corrupt)
        if root_cert.public_key() != root_key.public_key():
            raise corrupt(f"{ROOT_CERT_FILE} does not match {ROOT_KEY_FILE}")
        if issuing_cert.public_key() != issuing_key.public_key():
            raise corrupt(f"{ISSUING_CERT_FILE} does not match {ISSUING_KEY_FILE}")
        try:
            root_cert.verify_directly_issued_by(root_cert)
            issuing_cert.verify_directly_issued_by(root_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise corrupt("the issuing CA certificate is not signed by the root") from None
        for cert, name in ((root_cert, ROOT_CERT_FILE), (issuing_cert, ISSUING_CERT_FILE)):
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                raise corrupt(f"{name} is not a CA certificate") from None
            if not bc.ca:
                raise corrupt(f"{name} is not a CA certificate")
        trust_domain = _trust_domain_of(root_cert, corrupt)
        if _trust_domain_of(issuing_cert, corrupt) != trust_domain:
            raise corrupt("root and issuing CA certificates name different trust domains")
        return cls(
            directory=directory,
            trust_domain=trust_domain,
            clock=clock,
            root_certificate=root_cert,
            issuing_key=issuing_key,
            issuing_certificate=issuing_cert,
        )

    # properties --------------------------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._root_certificate

    @property
    def issuing_certificate(self) -> x509.Certificate:
        return self._issuing_certificate

    def trust_bundle_pem(self) -> bytes:
        """The root certificate, PEM: what every peer trusts."""
        return self._root_certificate.public_bytes(serialization.Encoding.PEM)

    # issuing -----------------------------------------------------------------------------------

    def issue_from_csr(
        self,
        csr_der: bytes,
        spiffe_id: SpiffeId,
        *,
        ttl_s: int = 3600,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        not_before_ms: int | None = None,
    ) -> IssuedCertificate:
        """Issue an X509-SVID for ``spiffe_id`` to the key in ``csr_der``.

        Only the CSR's public key is used (after checking its self-signature);
        the names it asks for are ignored. ``ttl_s`` [s] >= 1; the certificate
        never outlives the issuing CA. ``not_before_ms`` [ms] defaults to now.
        Raises RefusedError(CSR_INVALID) for a bad CSR, ValueError for bad arguments.
        """
        self._check_request(spiffe_id, ttl_s, dns_names, ip_addresses)
        public_key = verify_csr(csr_der, identity=spiffe_id.uri)
        return self._issue(public_key, spiffe_id, ttl_s, dns_names, ip_addresses, not_before_ms)

    def issue_with_new_key(
        self,
        spiffe_id: SpiffeId,
        *,
        ttl_s: int = 3600,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        not_before_ms: int | None = None,
    ) -> tuple[bytes, IssuedCertificate]:
        """Generate a P-256 key and issue for it; returns (PKCS#8 PEM private key, certificate)."""
        self._check_request(spiffe_id, ttl_s, dns_names, ip_addresses)
        key = generate_private_key()
        issued = self._issue(
            key.public_key(), spiffe_id, ttl_s, dns_names, ip_addresses, not_before_ms
        )
        return private_key_pem(key), issued

    def _check_request(
        self,
        spiffe_id: SpiffeId,
        ttl_s: int,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
    ) -> None:
        if not isinstance(spiffe_id, SpiffeId):
            raise ValueError("spiffe_id must be a SpiffeId")
        if spiffe_id.trust_domain != self._trust_domain:
            raise ValueError(
                f"the CA of trust domain {self._trust_domain!r} cannot issue for {spiffe_id}"
            )
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError(f"ttl_s must be an integer >= 1, got {ttl_s!r}")
        if isinstance(dns_names, str) or isinstance(ip_addresses, str):
            raise ValueError("dns_names and ip_addresses must be sequences of strings")
        if (dns_names or ip_addresses) and spiffe_id.role is not Role.CONTROL_PLANE:
            raise ValueError(
                f"DNS/IP SANs are only issued to control-plane identities, not {spiffe_id}"
            )

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe_id: SpiffeId,
        ttl_s: int,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        not_before_ms: int | None,
    ) -> IssuedCertificate:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id.uri)]
        names += [x509.DNSName(_validate_dns_name(n)) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]

        start_ms = self._clock.now_ms() if not_before_ms is None else not_before_ms
        not_before_s = start_ms // 1000  # round down; see the module docstring
        if not_before_s >= self._issuing_not_after_s:
            raise GridfortError(
                f"the issuing CA certificate in {self._directory} expires before the requested "
                "start time; the CA must be renewed"
            )
        not_after_s = min(not_before_s + ttl_s, self._issuing_not_after_s)
        serial = _random_serial()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gridfort"),
                        x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.name),
                    ]
                )
            )
            .issuer_name(self._issuing_certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(_datetime(not_before_s))
            .not_valid_after(_datetime(not_after_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(_ski(public_key), critical=False)
            .add_extension(self._issuing_aki, critical=False)
            .sign(self._issuing_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        return IssuedCertificate(
            certificate=cert,
            chain_pem=cert.public_bytes(pem) + self._issuing_certificate.public_bytes(pem),
            spiffe_id=spiffe_id,
            serial=serial,
            not_before_ms=not_before_s * 1000,
            not_after_ms=not_after_s * 1000,
        )


def _random_serial() -> int:
    """A positive random serial of up to 128 bits (RFC 5280 allows 20 octets)."""
    return 1 + secrets.randbelow((1 << 128) - 1)


def _prepare_directory(directory: Path) -> None:
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        return
    if not directory.is_dir():
        raise GridfortError(f"cannot create a CA in {directory}: it is not a directory")
    existing = [name for name in _CA_FILES if (directory / name).exists()]
    if existing:
        raise GridfortError(
            f"a CA already exists in {directory} ({', '.join(existing)}); refusing to overwrite it"
        )
    st = directory.stat()
    if st.st_mode & 0o077:
        if any(directory.iterdir()) or st.st_uid != os.geteuid():
            raise GridfortError(
                f"CA directory {directory} is accessible by group or others "
                f"(mode {st.st_mode & 0o777:04o}); use an empty directory or chmod 700 it"
            )
        # Empty and ours: tighten it before any secret is written into it.
        directory.chmod(0o700)


def _check_key_file(path: Path) -> None:
    st = path.stat()
    mode = st.st_mode & 0o777
    if mode & 0o077:
        raise GridfortError(
            f"CA key {path} is readable or writable by group or others (mode {mode:04o}); "
            f"it must be 0600: run chmod 600 {path} and consider the key compromised"
        )
    if st.st_uid != os.geteuid():
        raise GridfortError(f"CA key {path} is not owned by the user running Gridfort")


def _load_key(path: Path, corrupt: _Corrupt) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise corrupt(f"{path.name} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise corrupt(f"{path.name} is not an ECDSA P-256 key")
    return key


def _load_cert(path: Path, corrupt: _Corrupt) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise corrupt(f"{path.name} is not a PEM certificate") from None


def _trust_domain_of(cert: x509.Certificate, corrupt: _Corrupt) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        (uri,) = uris
        trust_domain = uri.removeprefix("spiffe://")
        if trust_domain_uri(trust_domain) != uri:
            raise ValueError(uri)
    except (x509.ExtensionNotFound, ValueError):
        raise corrupt("a CA certificate does not name its trust domain (spiffe://<dom>)") from None
    return trust_domain
