"""The control plane's own TLS server identity, issued by the embedded CA and rotated at half-life.

gRPC asks ``fetch()`` on every new handshake; it returns a new certificate
configuration only when the current certificate reached half of its life, so
rotation never drops an open stream (existing connections keep their session).
"""

from __future__ import annotations

import threading

import grpc
from cryptography import x509

from security.ca import CertificateAuthority
from security.clock import Clock
from security.identity import SpiffeId
from security.identity import control_plane_dns_name as control_plane_dns_name
from security.rotation import should_rotate


class ServerIdentity:
    def __init__(
        self,
        ca: CertificateAuthority,
        spiffe_id: SpiffeId,
        clock: Clock,
        *,
        dns_names: tuple[str, ...],
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
        ttl_s: int = 3600,
    ) -> None:
        self._ca = ca
        self.spiffe_id = spiffe_id
        self._clock = clock
        self._dns = dns_names
        self._ips = ip_addresses
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self.rotations = 0
        self._key_pem, self._chain_pem, self._cert = self._issue()
        self._served: bytes | None = None

    def _issue(self) -> tuple[bytes, bytes, x509.Certificate]:
        key_pem, issued = self._ca.issue_with_new_key(
            self.spiffe_id, ttl_s=self._ttl_s, dns_names=self._dns, ip_addresses=self._ips
        )
        return key_pem, issued.chain_pem, issued.certificate

    def current(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate chain PEM), rotated first if due."""
        with self._lock:
            if should_rotate(self._cert, self._clock.now_ms()):
                self._key_pem, self._chain_pem, self._cert = self._issue()
                self.rotations += 1
            return self._key_pem, self._chain_pem

    def credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        key_pem, chain_pem = self.current()
        bundle = self._ca.trust_bundle_pem()
        initial = grpc.ssl_server_certificate_configuration(
            [(key_pem, chain_pem)], root_certificates=bundle
        )
        return grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=require_client_cert
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        key_pem, chain_pem = self.current()
        if chain_pem == self._served:
            return None
        self._served = chain_pem
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, chain_pem)], root_certificates=self._ca.trust_bundle_pem()
        )
