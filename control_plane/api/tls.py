"""The REST server's TLS: the control plane's own rotating identity, client certificates required.

The server certificate is the one gRPC serves (:class:`ServerIdentity`, rotated
at half-life). As gRPC asks ``fetch()`` on every handshake, this context asks
``ServerIdentity.current()`` on every ClientHello (OpenSSL's servername
callback runs on every handshake, with or without SNI) and switches the new
connection to a context holding the rotated certificate; open connections keep
theirs. Client certificates are required and verified against the trust
bundle by OpenSSL: no certificate, a foreign CA or an expired certificate ends
the handshake. Those refusals never reach HTTP, so the context reports them
through ``on_refused`` (the access audit) from its ``SSLObject`` class.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from control_plane.api.problems import AnyReason
from control_plane.tls_identity import ServerIdentity
from security.refusals import Reason

log = logging.getLogger(__name__)

#: OpenSSL X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED.
_VALIDITY_ERRORS = frozenset({9, 10})

HandshakeRefused = Callable[[AnyReason, str], None]


def classify_handshake_error(e: ssl.SSLError) -> tuple[AnyReason, str]:
    """The stable reason and a message (OpenSSL's short code, never peer text) for a failure."""
    if isinstance(e, ssl.SSLCertVerificationError):
        if e.verify_code in _VALIDITY_ERRORS:
            return Reason.CERT_NOT_VALID_NOW, "TLS: the client certificate is not valid now"
        return Reason.UNTRUSTED_CERT, "TLS: the client certificate does not chain to our CA"
    code = str(e.reason or type(e).__name__)[:64]
    if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return Reason.NO_CLIENT_CERT, "TLS: a client certificate is required"
    if "CERTIFICATE" in code or code in ("TLSV1_ALERT_UNKNOWN_CA", "UNKNOWN_CA"):
        return Reason.UNTRUSTED_CERT, f"TLS: the client certificate was refused ({code})"
    return Reason.MALFORMED_REQUEST, f"TLS handshake failed ({code})"


def _auditing_sslobject(on_refused: HandshakeRefused) -> type[ssl.SSLObject]:
    class AuditingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as e:
                try:
                    on_refused(*classify_handshake_error(e))
                except Exception:  # auditing must never break the TLS machinery
                    log.exception("could not record a TLS handshake refusal")
                raise

    return AuditingSSLObject


def _load_chain(ctx: ssl.SSLContext, key_pem: bytes, chain_pem: bytes) -> None:
    """``load_cert_chain`` reads files only: hand it an anonymous memory file (Linux), else a
    0600 file in a fresh 0700 directory removed at once."""
    data = chain_pem + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("gridfort-api-tls", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="gridfort-api-") as d:  # pragma: no cover
        path = Path(d) / "tls.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ctx.load_cert_chain(path)


class ApiTlsContext:
    """Owns the server ``ssl.SSLContext`` (:attr:`context`) of the REST listener."""

    def __init__(
        self, identity: ServerIdentity, bundle_pem: bytes, on_refused: HandshakeRefused
    ) -> None:
        self._identity = identity
        self._bundle = bundle_pem.decode("ascii")
        key_pem, chain_pem = identity.current()
        self._served = chain_pem
        self.context = self._build(key_pem, chain_pem)
        self.context.sni_callback = self._select
        self.context.sslobject_class = _auditing_sslobject(on_refused)
        self._current = self.context
        self.rotations = 0

    def _build(self, key_pem: bytes, chain_pem: bytes) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self._bundle)
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        ctx.set_alpn_protocols(["http/1.1"])
        _load_chain(ctx, key_pem, chain_pem)
        return ctx

    def _select(
        self, ssl_obj: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        """Servername callback, on every ClientHello: serve the current (rotated) certificate."""
        try:
            key_pem, chain_pem = self._identity.current()
            if chain_pem != self._served:
                self._current = self._build(key_pem, chain_pem)
                self._served = chain_pem
                self.rotations += 1
            if self._current is not self.context:
                ssl_obj.context = self._current
        except Exception:  # never serve a half-built context
            log.exception("could not select the REST server certificate")
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def close(self) -> None:
        """Drop the callbacks (they hold the identity); the contexts die with their sockets."""
        with contextlib.suppress(AttributeError):
            self.context.sni_callback = None
