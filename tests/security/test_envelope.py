"""Signed envelopes: domain separation, exact bytes, tamper detection, decoding."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from gridfort.v1 import envelope_pb2 as epb
from security.envelope import (
    EnvelopeSigner,
    decode_envelope,
    generate_signing_key,
    load_signing_key,
    public_key_raw,
    save_signing_key,
    signing_message,
    verify_ed25519,
    verify_signature,
)
from security.refusals import Reason, Refusal
from security.signing_keys import load_signing_public_key

SIGNER = "spiffe://gridfort.test/edge/s1"


@pytest.fixture
def signer() -> EnvelopeSigner:
    return EnvelopeSigner(generate_signing_key(), SIGNER)


def test_signature_verifies_with_the_right_key(signer: EnvelopeSigner) -> None:
    env = signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, b"payload", 1000)
    key = generate_signing_key()
    assert verify_signature(env, signer._key.public_key())
    assert not verify_signature(env, key.public_key())


@pytest.mark.parametrize("field", ["payload", "signer", "signed_ms", "payload_type", "signature"])
def test_any_altered_field_breaks_the_signature(signer: EnvelopeSigner, field: str) -> None:
    env = signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, b"payload", 1000)
    public = signer._key.public_key()
    if field == "payload":
        env.payload = b"paylaod"
    elif field == "signer":
        env.signer = "spiffe://gridfort.test/edge/s2"
    elif field == "signed_ms":
        env.signed_ms = 1001
    elif field == "payload_type":
        env.payload_type = epb.PAYLOAD_TYPE_COMMAND  # domain separation
    else:
        env.signature = bytes([env.signature[0] ^ 1]) + env.signature[1:]
    assert not verify_signature(env, public)


def test_signing_message_is_domain_separated() -> None:
    a = signing_message(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, SIGNER, 1, b"x")
    b = signing_message(epb.PAYLOAD_TYPE_COMMAND, SIGNER, 1, b"x")
    assert a.startswith(b"gridfort/v1/PAYLOAD_TYPE_TELEMETRY_BATCH\0") and a != b


def test_key_file_roundtrip_is_0600(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = generate_signing_key()
    path = tmp_path / "k.pem"
    save_signing_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(path).public_key() == key.public_key()


def test_oversized_envelope_is_refused() -> None:
    result = decode_envelope(b"\0" * 2000, max_bytes=1000)
    assert isinstance(result, Refusal) and result.reason is Reason.OVERSIZED


@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    result = decode_envelope(data, max_bytes=512)
    assert isinstance(result, Refusal | epb.SignedEnvelope)
    if isinstance(result, Refusal):
        assert result.reason in (Reason.OVERSIZED, Reason.MALFORMED_ENVELOPE)


# -- verification backend (libsodium) against the signer's (OpenSSL) -----------------------

# RFC 8032, section 7.1, TEST 1 and TEST 2: (secret key, public key, message, signature)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors_sign_with_openssl_and_verify_with_libsodium(
    secret: str, public: str, message: str, signature: str
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert public_key_raw(key.public_key()).hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature
    pub = key.public_key()
    sig, msg = bytes.fromhex(signature), bytes.fromhex(message)
    assert verify_ed25519(pub, sig, msg)
    assert not verify_ed25519(pub, sig, msg + b"\0")
    assert not verify_ed25519(pub, sig[:-1] + bytes([sig[-1] ^ 0x01]), msg)


@given(
    message=st.binary(max_size=4096),
    flip=st.integers(min_value=0, max_value=8 * 64 - 1),
    where=st.sampled_from(["signature", "message"]),
)
def test_libsodium_and_openssl_agree_on_valid_and_tampered_signatures(
    message: bytes, flip: int, where: str
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key()
    sig = key.sign(message)
    assert verify_ed25519(pub, sig, message)
    bad_sig, bad_msg = bytearray(sig), bytearray(message)
    if where == "signature":
        bad_sig[flip // 8] ^= 1 << (flip % 8)
    elif message:
        bad_msg[(flip // 8) % len(message)] ^= 1 << (flip % 8)
    else:
        return
    try:
        pub.verify(bytes(bad_sig), bytes(bad_msg))
        openssl_ok = True
    except InvalidSignature:
        openssl_ok = False
    assert not openssl_ok
    assert not verify_ed25519(pub, bytes(bad_sig), bytes(bad_msg))


def test_malformed_signatures_are_refused_without_raising(signer: EnvelopeSigner) -> None:
    pub = load_signing_public_key(signer.public_key_raw)
    for bad in (b"", b"\0" * 63, b"\0" * 65, b"\xff" * 64):
        assert not verify_ed25519(pub, bad, b"message")


def test_small_order_public_key_is_refused() -> None:
    # the identity point (y = 1): every "signature" with R = identity and S = 0 satisfies
    # the cofactorless equation under it; libsodium refuses small-order keys outright
    identity = bytes([1] + [0] * 31)
    pub = Ed25519PublicKey.from_public_bytes(identity)
    forged = identity + bytes(32)
    assert not verify_ed25519(pub, forged, b"any message")
