"""The certificate authority: files and permissions, CSR checks, and the certificates it issues."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from security.ca import (
    ISSUING_CERT_FILE,
    ISSUING_KEY_FILE,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    CertificateAuthority,
    generate_private_key,
    make_csr,
    write_bytes_atomic,
    write_private_key,
)
from security.clock import ManualClock
from security.identity import Role, SpiffeId, spiffe_id_from_certificate
from security.refusals import ConfigError, GridfortError, Reason, RefusedError
from security.rotation import certificate_valid_at

T0_MS = 1_900_000_000_123  # deliberately not on a second boundary
DOMAIN = "grid.example"
EDGE = SpiffeId(DOMAIN, Role.EDGE, "site-1")
CONTROL = SpiffeId(DOMAIN, Role.CONTROL_PLANE, "cp-0")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
def ca(tmp_path: Path, clock: ManualClock) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _refusal_reason(info: pytest.ExceptionInfo[RefusedError]) -> Reason:
    return info.value.refusal.reason


# -- files and permissions -----------------------------------------------------------------------


def test_private_keys_are_0600(tmp_path: Path, clock: ManualClock) -> None:
    old_umask = os.umask(0)  # even a careless umask must not widen the keys
    try:
        ca = CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock)
        write_private_key(tmp_path / "leaf.key", generate_private_key())
    finally:
        os.umask(old_umask)
    assert _mode(ca.directory) == 0o700
    assert _mode(ca.directory / ROOT_KEY_FILE) == 0o600
    assert _mode(ca.directory / ISSUING_KEY_FILE) == 0o600
    assert _mode(tmp_path / "leaf.key") == 0o600
    assert sorted(p.name for p in ca.directory.iterdir()) == sorted(
        [ROOT_KEY_FILE, ROOT_CERT_FILE, ISSUING_KEY_FILE, ISSUING_CERT_FILE]
    ), "no temp files left behind"


def test_write_bytes_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_bytes_atomic(target, b"one", 0o644)
    write_bytes_atomic(target, b"two", 0o600)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_init_refuses_existing_ca(tmp_path: Path, clock: ManualClock) -> None:
    CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock)
    before = (tmp_path / "ca" / ROOT_KEY_FILE).read_bytes()
    with pytest.raises(GridfortError, match="already exists"):
        CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock)
    assert (tmp_path / "ca" / ROOT_KEY_FILE).read_bytes() == before


def test_init_tightens_an_empty_existing_directory(tmp_path: Path, clock: ManualClock) -> None:
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    CertificateAuthority.init(directory, DOMAIN, clock)
    assert _mode(directory) == 0o700


def test_init_refuses_loose_non_empty_directory(tmp_path: Path, clock: ManualClock) -> None:
    directory = tmp_path / "ca"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "other").write_text("x")
    with pytest.raises(GridfortError, match="group or others"):
        CertificateAuthority.init(directory, DOMAIN, clock)


def test_init_rejects_bad_trust_domain(tmp_path: Path, clock: ManualClock) -> None:
    with pytest.raises(ConfigError, match="trust_domain"):
        CertificateAuthority.init(tmp_path / "ca", "Grid.Example", clock)


def test_load_round_trips(ca: CertificateAuthority, clock: ManualClock) -> None:
    loaded = CertificateAuthority.load(ca.directory, clock)
    assert loaded.trust_domain == DOMAIN
    assert loaded.root_certificate == ca.root_certificate
    assert loaded.issuing_certificate == ca.issuing_certificate
    assert loaded.trust_bundle_pem() == ca.trust_bundle_pem()
    issued = loaded.issue_from_csr(make_csr(generate_private_key()), EDGE)
    issued.certificate.verify_directly_issued_by(ca.issuing_certificate)


def test_load_refuses_missing_directory(tmp_path: Path, clock: ManualClock) -> None:
    with pytest.raises(GridfortError, match="does not exist"):
        CertificateAuthority.load(tmp_path / "nope", clock)


def test_load_refuses_missing_file(ca: CertificateAuthority, clock: ManualClock) -> None:
    (ca.directory / ISSUING_CERT_FILE).unlink()
    with pytest.raises(GridfortError, match=r"incomplete: missing issuing\.cert\.pem"):
        CertificateAuthority.load(ca.directory, clock)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_load_refuses_readable_key(ca: CertificateAuthority, clock: ManualClock, mode: int) -> None:
    (ca.directory / ISSUING_KEY_FILE).chmod(mode)
    with pytest.raises(GridfortError, match="must be 0600"):
        CertificateAuthority.load(ca.directory, clock)


def test_load_refuses_writable_directory(ca: CertificateAuthority, clock: ManualClock) -> None:
    ca.directory.chmod(0o777)
    with pytest.raises(GridfortError, match="writable by group or others"):
        CertificateAuthority.load(ca.directory, clock)


def test_load_refuses_corrupt_pem(ca: CertificateAuthority, clock: ManualClock) -> None:
    (ca.directory / ROOT_CERT_FILE).write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(GridfortError, match=r"corrupt: root\.cert\.pem is not a PEM certificate"):
        CertificateAuthority.load(ca.directory, clock)


def test_load_refuses_swapped_key(ca: CertificateAuthority, clock: ManualClock) -> None:
    write_private_key(ca.directory / ISSUING_KEY_FILE, generate_private_key())
    with pytest.raises(GridfortError, match="does not match"):
        CertificateAuthority.load(ca.directory, clock)


def test_load_refuses_issuing_cert_from_another_root(
    ca: CertificateAuthority, tmp_path: Path, clock: ManualClock
) -> None:
    other = CertificateAuthority.init(tmp_path / "other", DOMAIN, clock)
    for name in (ISSUING_CERT_FILE, ISSUING_KEY_FILE):
        write_bytes_atomic(ca.directory / name, (other.directory / name).read_bytes(), 0o600)
    with pytest.raises(GridfortError, match="not signed by the root"):
        CertificateAuthority.load(ca.directory, clock)


# -- CA certificates -----------------------------------------------------------------------------


def test_ca_certificates(ca: CertificateAuthority) -> None:
    root, issuing = ca.root_certificate, ca.issuing_certificate
    root.verify_directly_issued_by(root)
    issuing.verify_directly_issued_by(root)
    for cert, path_len in ((root, 1), (issuing, 0)):
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_len
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.trust_bundle_pem() == root.public_bytes(serialization.Encoding.PEM)


# -- leaf certificates ---------------------------------------------------------------------------


def test_issued_certificate_is_an_x509_svid(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    issued = ca.issue_from_csr(make_csr(key), EDGE, ttl_s=600)
    cert = issued.certificate
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.issuing_certificate)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(EDGE.uri)]
    assert spiffe_id_from_certificate(cert) == EDGE == issued.spiffe_id
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-1"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_agreement
    assert not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert issued.serial == cert.serial_number > 0
    assert issued.serial.bit_length() <= 128
    # notBefore is now rounded down to the second (never later than the real issuing time)
    assert issued.not_before_ms == T0_MS // 1000 * 1000
    assert issued.not_after_ms == issued.not_before_ms + 600_000
    assert cert.not_valid_before_utc.timestamp() * 1000 == issued.not_before_ms
    pem = serialization.Encoding.PEM
    assert issued.chain_pem == cert.public_bytes(pem) + ca.issuing_certificate.public_bytes(pem)


def test_serials_differ(ca: CertificateAuthority) -> None:
    serials = {ca.issue_with_new_key(EDGE)[1].serial for _ in range(20)}
    assert len(serials) == 20


def test_issued_chain_passes_strict_rfc5280_path_validation(ca: CertificateAuthority) -> None:
    _, issued = ca.issue_with_new_key(EDGE)
    verifier = (
        PolicyBuilder()
        .store(Store([ca.root_certificate]))
        .time(dt.datetime.fromtimestamp(T0_MS / 1000 + 10, tz=dt.UTC))
        .build_client_verifier()
    )
    verified = verifier.verify(issued.certificate, [ca.issuing_certificate])
    assert verified.chain[-1] == ca.root_certificate
    assert x509.UniformResourceIdentifier(EDGE.uri) in (verified.subjects or [])


def test_control_plane_may_get_dns_and_ip_sans(ca: CertificateAuthority) -> None:
    _, issued = ca.issue_with_new_key(
        CONTROL, dns_names=["localhost", "cp.grid.example"], ip_addresses=["127.0.0.1", "::1"]
    )
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [CONTROL.uri]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "cp.grid.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


@pytest.mark.parametrize("role", [Role.EDGE, Role.OPERATOR, Role.SOC])
def test_dns_and_ip_sans_refused_for_non_control_plane(
    ca: CertificateAuthority, role: Role
) -> None:
    sid = SpiffeId(DOMAIN, role, "x")
    with pytest.raises(ValueError, match="only issued to control-plane"):
        ca.issue_with_new_key(sid, dns_names=["evil.example"])
    with pytest.raises(ValueError, match="only issued to control-plane"):
        ca.issue_from_csr(make_csr(generate_private_key()), sid, ip_addresses=["10.0.0.1"])


@pytest.mark.parametrize("bad", ["-bad.example", "a..b", "x" * 64 + ".example", "a_b.example"])
def test_invalid_dns_names_refused(ca: CertificateAuthority, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid DNS name"):
        ca.issue_with_new_key(CONTROL, dns_names=[bad])


def test_other_trust_domain_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="cannot issue"):
        ca.issue_with_new_key(SpiffeId("other.example", Role.EDGE, "site-1"))


@pytest.mark.parametrize("ttl_s", [0, -5])
def test_ttl_must_be_positive(ca: CertificateAuthority, ttl_s: int) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        ca.issue_with_new_key(EDGE, ttl_s=ttl_s)


def test_expired_and_not_yet_valid_certificates_can_be_issued_for_tests(
    ca: CertificateAuthority,
) -> None:
    _, expired = ca.issue_with_new_key(EDGE, not_before_ms=T0_MS - 7_200_000, ttl_s=1)
    _, future = ca.issue_with_new_key(EDGE, not_before_ms=T0_MS + 3_600_000, ttl_s=60)
    assert not certificate_valid_at(expired.certificate, T0_MS)
    assert not certificate_valid_at(future.certificate, T0_MS)
    assert expired.not_after_ms == expired.not_before_ms + 1000


def test_certificate_never_outlives_issuing_ca(tmp_path: Path, clock: ManualClock) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock, issuing_ttl_s=100)
    _, issued = ca.issue_with_new_key(EDGE, ttl_s=3600)
    assert issued.certificate.not_valid_after_utc == ca.issuing_certificate.not_valid_after_utc
    clock.advance(200_000)
    with pytest.raises(GridfortError, match="must be renewed"):
        ca.issue_with_new_key(EDGE)


def test_issue_with_new_key_returns_matching_pkcs8_key(ca: CertificateAuthority) -> None:
    key_pem, issued = ca.issue_with_new_key(EDGE)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert issued.certificate.public_key() == key.public_key()


# -- hostile CSRs --------------------------------------------------------------------------------


def test_csr_with_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aaaa")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    tampered = csr.replace(b"aaaa", b"bbbb")  # still valid DER, signature no longer matches
    assert tampered != csr
    with pytest.raises(RefusedError) as info:
        ca.issue_from_csr(tampered, EDGE)
    assert _refusal_reason(info) is Reason.CSR_INVALID
    assert "signature does not verify" in info.value.refusal.message
    assert info.value.refusal.identity == EDGE.uri


def test_csr_signed_by_another_key_is_refused(ca: CertificateAuthority) -> None:
    """Proof of possession: a CSR for key A signed with key B must not verify."""
    victim, attacker = generate_private_key(), generate_private_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    good = builder.sign(victim, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    other = builder.sign(attacker, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    victim_spki = victim.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker_spki = attacker.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = other.replace(attacker_spki, victim_spki)
    assert forged != other and good != forged
    with pytest.raises(RefusedError) as info:
        ca.issue_from_csr(forged, EDGE)
    assert _refusal_reason(info) is Reason.CSR_INVALID


def test_rsa_csr_is_refused(ca: CertificateAuthority) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(RefusedError) as info:
        ca.issue_from_csr(make_csr(rsa_key), EDGE)
    assert _refusal_reason(info) is Reason.CSR_INVALID
    assert info.value.refusal.message == "CSR key must be ECDSA P-256, got RSA 2048"


def test_p384_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(RefusedError, match="got ECDSA secp384r1"):
        ca.issue_from_csr(make_csr(ec.generate_private_key(ec.SECP384R1())), EDGE)


def test_ed25519_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(RefusedError, match="got Ed25519"):
        ca.issue_from_csr(make_csr(ed25519.Ed25519PrivateKey.generate()), EDGE)


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"", "not a DER-encoded"),
        (b"\x30\x03\x02\x01\x01", "not a DER-encoded"),
        (b"\x00" * 20_000, "larger than"),
    ],
)
def test_garbage_csr_is_refused(ca: CertificateAuthority, csr: bytes, message: str) -> None:
    with pytest.raises(RefusedError, match=message) as info:
        ca.issue_from_csr(csr, EDGE)
    assert _refusal_reason(info) is Reason.CSR_INVALID


def test_csr_asking_for_another_identity_gets_only_its_own(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control-plane")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/control-plane/cp-0"),
                    x509.UniformResourceIdentifier("spiffe://evil.example/operator/root"),
                    x509.DNSName("cp.grid.example"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    cert = ca.issue_from_csr(greedy, EDGE).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(EDGE.uri)]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-1"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# -- interop: a real mutual-TLS handshake through OpenSSL ----------------------------------------


def test_issued_certificates_work_for_mutual_tls(tmp_path: Path, clock: ManualClock) -> None:
    clock.set(int(dt.datetime.now(dt.UTC).timestamp() * 1000))  # OpenSSL checks the real time
    ca = CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.trust_bundle_pem())

    def files(name: str, key_pem: bytes, chain_pem: bytes) -> tuple[str, str]:
        write_bytes_atomic(tmp_path / f"{name}.key", key_pem, 0o600)
        write_bytes_atomic(tmp_path / f"{name}.pem", chain_pem, 0o644)
        return str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key")

    server_key, server = ca.issue_with_new_key(CONTROL, dns_names=["localhost"])
    client_key, client = ca.issue_with_new_key(EDGE)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*files("server", server_key, server.chain_pem))
    server_ctx.load_verify_locations(cafile=str(bundle))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(*files("client", client_key, client.chain_pem))
    client_ctx.load_verify_locations(cafile=str(bundle))

    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_tls = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server_tls = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, tls, out, peer_in in (
            ("client", client_tls, c_out, s_in),
            ("server", server_tls, s_out, c_in),
        ):
            if not done[name]:
                try:
                    tls.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            break
    assert all(done.values())
    peer_der = server_tls.getpeercert(binary_form=True)
    assert peer_der is not None
    assert spiffe_id_from_certificate(x509.load_der_x509_certificate(peer_der)) == EDGE


def test_write_bytes_atomic_without_overwrite_never_clobbers(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_bytes_atomic(target, b"first", 0o600, overwrite=False)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(target, b"second", 0o600, overwrite=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
