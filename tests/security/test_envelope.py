"""Signed envelopes: domain separation, exact bytes, tamper detection, decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridfort.v1 import envelope_pb2 as epb
from security.envelope import (
    EnvelopeSigner,
    decode_envelope,
    generate_signing_key,
    load_signing_key,
    save_signing_key,
    signing_message,
    verify_signature,
)
from security.refusals import Reason, Refusal

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
