"""When a certificate is valid and when to rotate it: pure functions of the certificate and ``now``.

X.509 validity has one-second resolution and is inclusive at both ends
(RFC 5280 4.1.2.5): a certificate is valid from ``notBefore`` through
``notAfter``. All times here are Unix epoch milliseconds [ms].
"""

from __future__ import annotations

from cryptography import x509


def not_before_ms(cert: x509.Certificate) -> int:
    """The certificate's ``notBefore`` [ms]."""
    return int(cert.not_valid_before_utc.timestamp()) * 1000


def not_after_ms(cert: x509.Certificate) -> int:
    """The certificate's ``notAfter`` [ms]."""
    return int(cert.not_valid_after_utc.timestamp()) * 1000


def rotation_due_ms(cert: x509.Certificate, fraction: float = 0.5) -> int:
    """When to rotate: ``notBefore + fraction * lifetime`` [ms].

    ``fraction`` is the share of the lifetime to use before renewing, in (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"rotation fraction must be in (0, 1], got {fraction!r}")
    start = not_before_ms(cert)
    return start + int(fraction * (not_after_ms(cert) - start))


def should_rotate(cert: x509.Certificate, now_ms: int, fraction: float = 0.5) -> bool:
    """True once ``now_ms`` [ms] has reached :func:`rotation_due_ms`."""
    return now_ms >= rotation_due_ms(cert, fraction)


def certificate_valid_at(cert: x509.Certificate, now_ms: int) -> bool:
    """True iff ``notBefore <= now_ms <= notAfter`` [ms]."""
    return not_before_ms(cert) <= now_ms <= not_after_ms(cert)
