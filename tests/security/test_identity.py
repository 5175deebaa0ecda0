"""SPIFFE IDs: parsing, validation, and extraction from certificates."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from security.identity import (
    MAX_SPIFFE_ID_LEN,
    Role,
    SpiffeId,
    spiffe_id_from_certificate,
    trust_domain_uri,
)


@pytest.mark.parametrize("role", list(Role))
def test_parse_round_trips_every_role(role: Role) -> None:
    uri = f"spiffe://grid.example-1_a/{role.value}/site-7.b_c"
    sid = SpiffeId.parse(uri)
    assert sid == SpiffeId("grid.example-1_a", role, "site-7.b_c")
    assert str(sid) == sid.uri == uri
    assert SpiffeId.parse(str(sid)) == sid


def test_role_given_as_plain_string_is_coerced() -> None:
    sid = SpiffeId("example.org", "edge", "s1")  # type: ignore[arg-type]
    assert sid.role is Role.EDGE


def test_spiffe_ids_are_hashable_values() -> None:
    a = SpiffeId.parse("spiffe://example.org/edge/s1")
    assert {a: 1}[SpiffeId("example.org", Role.EDGE, "s1")] == 1


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty"),
        ("https://example.org/edge/s1", "wrong scheme 'https'"),
        ("SPIFFE://example.org/edge/s1", "lowercase 'spiffe'"),
        ("example.org/edge/s1", "missing scheme"),
        ("spiffe:/example.org/edge/s1", "missing scheme"),
        ("spiffe://example.org/edge/s1?x=1", "query"),
        ("spiffe://example.org/edge/s1#frag", "fragment"),
        ("spiffe://example.org:8443/edge/s1", "port"),
        ("spiffe://user@example.org/edge/s1", "userinfo"),
        ("spiffe:///edge/s1", "no trust domain"),
        ("spiffe://Example.org/edge/s1", "lowercase letters"),
        ("spiffe://exa mple.org/edge/s1", "lowercase letters"),
        ("spiffe://example.org", "no path"),
        ("spiffe://example.org/", "no path"),
        ("spiffe://example.org/edge", "too short"),
        ("spiffe://example.org/admin/s1", "unknown role segment 'admin'"),
        ("spiffe://example.org/Edge/s1", "unknown role segment"),
        ("spiffe://example.org//s1", "unknown role segment ''"),
        ("spiffe://example.org/edge/s1/extra", "3 path segments"),
        ("spiffe://example.org/edge/s1/", "must not end with '/'"),
        ("spiffe://example.org/edge/", "name is empty"),
        ("spiffe://example.org/edge/..", "'..'"),
        ("spiffe://example.org/edge/.", "'..'"),
        ("spiffe://example.org/edge/a..b", "'..'"),
        ("spiffe://example.org/edge/s%2F1", "may contain only"),
        ("spiffe://example.org/edge/s\u00e91", "may contain only"),
        ("spiffe://example.org/edge/" + "a" * 65, "longer than 64"),
        ("spiffe://" + "a" * 256 + "/edge/s1", "longer than 255"),
        ("spiffe://example.org/edge/" + "a" * MAX_SPIFFE_ID_LEN, "too long"),
    ],
)
def test_parse_rejects_with_precise_message(uri: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        SpiffeId.parse(uri)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("domain", "name"),
    [("", "s1"), ("UPPER", "s1"), ("a/b", "s1"), ("example.org", ""), ("example.org", "a/b")],
)
def test_constructor_validates(domain: str, name: str) -> None:
    with pytest.raises(ValueError):
        SpiffeId(domain, Role.EDGE, name)


def test_constructor_rejects_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        SpiffeId("example.org", "root", "s1")  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_parse_random_text_only_raises_value_error(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except ValueError:
        return
    assert sid.uri == text


_NEAR_MISS = st.text(alphabet="abcZ09.-_/:@?#%~ \x00\u00e9", max_size=60)


@given(_NEAR_MISS)
def test_parse_near_miss_spiffe_text_only_raises_value_error(tail: str) -> None:
    try:
        sid = SpiffeId.parse("spiffe://" + tail)
    except ValueError:
        return
    assert sid.uri == "spiffe://" + tail


_DOMAIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=40)
_NAME = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_",
    min_size=1,
    max_size=64,
).filter(lambda n: n != "." and ".." not in n)


@given(_DOMAIN, st.sampled_from(list(Role)), _NAME)
def test_valid_components_round_trip(domain: str, role: Role, name: str) -> None:
    sid = SpiffeId(domain, role, name)
    assert SpiffeId.parse(str(sid)) == sid


def _self_signed(general_names: list[x509.GeneralName] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if general_names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), False)
    return builder.sign(key, hashes.SHA256())


def test_spiffe_id_from_certificate_reads_the_uri_san() -> None:
    cert = _self_signed(
        [x509.DNSName("a.example"), x509.UniformResourceIdentifier("spiffe://d.org/soc/ana")]
    )
    assert spiffe_id_from_certificate(cert) == SpiffeId("d.org", Role.SOC, "ana")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (None, "no subjectAltName"),
        ([x509.DNSName("a.example")], "exactly one URI SAN, found 0"),
        (
            [
                x509.UniformResourceIdentifier("spiffe://d.org/edge/a"),
                x509.UniformResourceIdentifier("spiffe://d.org/edge/b"),
            ],
            "exactly one URI SAN, found 2",
        ),
        ([x509.UniformResourceIdentifier("https://d.org/edge/a")], "wrong scheme"),
        ([x509.UniformResourceIdentifier("spiffe://d.org")], "no path"),
    ],
)
def test_spiffe_id_from_certificate_refuses_non_svids(
    names: list[x509.GeneralName] | None, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        spiffe_id_from_certificate(_self_signed(names))
    assert message in str(info.value)


def test_trust_domain_uri() -> None:
    assert trust_domain_uri("example.org") == "spiffe://example.org"
    with pytest.raises(ValueError):
        trust_domain_uri("Example.org")
