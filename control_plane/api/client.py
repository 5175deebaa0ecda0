"""A small mutual-TLS client for the REST API (``gridfort api get|post``); standard library only.

The server is verified against the trust bundle and by name: the URL's host
must be one of the control plane's certificate names (``127.0.0.1``,
``localhost``, ``control-plane.<domain>`` or an ``extra_dns_names`` entry).
The CA puts DNS and IP names only on control-plane certificates, so a
verified name proves the server is a control plane of the domain.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from security.refusals import GridfortError

#: The largest answer read [bytes].
MAX_RESPONSE_BYTES = 16 << 20
DEFAULT_URL = "https://127.0.0.1:7445"


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """PEM files as ``gridfort ca issue`` writes them (tls.pem, tls.key, bundle.pem)."""

    cert: Path
    key: Path
    bundle: Path

    @classmethod
    def in_directory(cls, directory: Path) -> ClientFiles:
        return cls(directory / "tls.pem", directory / "tls.key", directory / "bundle.pem")


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def client_context(files: ClientFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.bundle))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def call(
    url: str,
    method: str,
    path: str,
    files: ClientFiles,
    *,
    body: bytes | None = None,
    timeout_s: float = 15.0,
) -> ApiAnswer:
    """One request to ``url`` (``https://HOST:PORT``) for ``path`` (``/v1/...``)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise GridfortError(f"--url {url!r}: expected https://HOST:PORT")
    if not path.startswith("/v1/"):
        raise GridfortError(f"path {path!r}: expected /v1/...")
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, context=client_context(files), timeout=timeout_s
    )
    try:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise GridfortError(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
        return ApiAnswer(response.status, data)
    finally:
        conn.close()
