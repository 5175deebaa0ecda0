"""Clients of the broker: mutual-TLS contexts and control-plane connections.

Every client certificate carries its SPIFFE ID as its only SAN (``verify_and_map``
tries e-mail and DNS names before URIs; see :mod:`control_plane.transports.nats_server`).
A long-lived control-plane connection (the ingest consumer, an ingest worker) uses
:class:`ControlPlaneClientTls`, whose certificate is renewed in place at half-life so
that nats-py's reconnects keep presenting a valid one.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

import nats
from cryptography import x509
from nats.aio.client import Client as NatsClient

from control_plane.transports.nats_config import inbox_prefix
from security.ca import CertificateAuthority
from security.clock import Clock
from security.identity import Role, SpiffeId
from security.rotation import should_rotate


def client_tls_from_files(
    cert_chain_file: Path, key_file: Path, bundle_pem: bytes
) -> ssl.SSLContext:
    """A client :class:`ssl.SSLContext` for nats-py: our certificate, verifying the server.

    The server must chain to ``bundle_pem`` and its certificate must name the host
    the client dials (``check_hostname`` stays on; pass ``tls_hostname="nats.<domain>"``
    to nats-py when dialling by another name). TLS 1.2 at least.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=bundle_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_chain_file, key_file)
    return ctx


def client_tls(cert_chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> ssl.SSLContext:
    """:func:`client_tls_from_files` for in-memory PEM (``ssl`` loads keys only from files).

    The key is written, mode 0600, into a private (0700) temporary directory and
    removed as soon as OpenSSL has read it.
    """
    with tempfile.TemporaryDirectory(prefix="gridfort-tls-") as tmp:
        key_file = Path(tmp) / "tls.key"
        cert_file = Path(tmp) / "tls.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        cert_file.write_bytes(cert_chain_pem)
        return client_tls_from_files(cert_file, key_file, bundle_pem)


class ControlPlaneClientTls:
    """The client TLS context of a long-lived control-plane connection, renewed in place.

    The certificate carries only the SPIFFE URI (see the module docstring). nats-py
    reuses its ``ssl.SSLContext`` for every reconnect, so :meth:`renew_if_due` loads a
    fresh certificate into the *same* context at half-life: a reconnect an hour later
    still presents a valid certificate. Times in ms (``now_ms`` from the injected clock).
    """

    def __init__(
        self, ca: CertificateAuthority, name: str, clock: Clock, *, ttl_s: int = 3600
    ) -> None:
        self._ca = ca
        self.spiffe_id = SpiffeId(ca.trust_domain, Role.CONTROL_PLANE, name)
        self._clock = clock
        self._ttl_s = ttl_s
        key_pem, chain_pem, self._cert = self._issue()
        self.context = client_tls(chain_pem, key_pem, ca.trust_bundle_pem())

    def _issue(self) -> tuple[bytes, bytes, x509.Certificate]:
        key_pem, issued = self._ca.issue_with_new_key(self.spiffe_id, ttl_s=self._ttl_s)
        return key_pem, issued.chain_pem, issued.certificate

    def renew_if_due(self) -> bool:
        """Re-issue the certificate into the same context at half-life. True if renewed."""
        if not should_rotate(self._cert, self._clock.now_ms()):
            return False
        key_pem, chain_pem, cert = self._issue()
        with tempfile.TemporaryDirectory(prefix="gridfort-tls-") as tmp:
            key_file, cert_file = Path(tmp) / "tls.key", Path(tmp) / "tls.pem"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem)
            cert_file.write_bytes(chain_pem)
            self.context.load_cert_chain(cert_file, key_file)
        self._cert = cert
        return True


async def connect_control_plane(
    urls: Iterable[str], tls: ssl.SSLContext, spiffe_id: SpiffeId, **options: object
) -> NatsClient:
    """A nats-py client as control plane ``spiffe_id`` (its own inbox prefix) to ``urls``.

    The defaults fail fast (no reconnect); a long-lived consumer passes
    ``allow_reconnect=True, max_reconnect_attempts=-1`` and its own ``error_cb``.
    """
    kwargs: dict[str, object] = {
        "tls": tls,
        "inbox_prefix": inbox_prefix(spiffe_id),
        "name": str(spiffe_id),
        "connect_timeout": 2,
        "allow_reconnect": False,
        # nats-py retries a refused TCP connect forever with 0; 1 means two quick tries.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        **options,
    }
    return await nats.connect(list(urls), **kwargs)
