"""Enrollment of edge sites (bootstrap token + CSR) and renewal of workload certificates.

Order of checks in :meth:`EnrollmentAuthority.enroll`, and why:

1. site id syntax, then ``site_exists``            -> SITE_UNKNOWN
2. token *checked* (not yet used)                  -> TOKEN_UNKNOWN/EXPIRED/ALREADY_USED/WRONG_SITE
3. CSR: DER, self-signature, P-256 key             -> CSR_INVALID
4. signing key: 32 bytes, a valid Ed25519 point of
   large order, not bound to another identity      -> CSR_INVALID (message names the key)
5. identity not revoked in the current second      -> IDENTITY_REVOKED (retry a second later)
6. token *redeemed* (atomic single use)            -> TOKEN_* if another request won
7. certificate issued, signing key enrolled, the identity's older signing keys retired

The token is burned only once the whole request is known to be good (steps
1-5), so a malformed request never costs the site its token, and it is burned
before anything is issued, so two racing requests can never both get a
certificate. Step 2 answers a caller without a valid token before any
cryptographic work is done for it. If issuing fails after step 6 (disk
error), the token is spent and the operator issues a new one.

Step 5 exists because X.509 times have whole seconds: a certificate issued in
the same second as a revocation of its identity would be born revoked (see
``security.revocation``), so refusing it before the token is burned is kinder.

Every outcome, allow or refusal, is appended to the audit log (event
``enrollment`` or ``renewal``); refusals go through ``AuditLog.record_refusal``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from security.audit_log import AuditLog
from security.bootstrap_tokens import BootstrapTokens, token_id
from security.ca import CertificateAuthority, IssuedCertificate, verify_csr
from security.clock import Clock
from security.identity import Role, SpiffeId
from security.refusals import Reason, Refusal, RefusedError
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry, load_signing_public_key

ENROLLMENT_EVENT = "enrollment"
RENEWAL_EVENT = "renewal"


@dataclass(frozen=True)
class EnrollmentResult:
    """What a newly enrolled edge receives."""

    spiffe_id: SpiffeId
    chain_pem: bytes
    trust_bundle_pem: bytes
    signing_key_id: str


class EnrollmentAuthority:
    """Turns a bootstrap token and a CSR into an edge identity; renews workload certificates."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: BootstrapTokens,
        keys: SigningKeyRegistry,
        revocations: RevocationList,
        audit: AuditLog,
        site_exists: Callable[[str], bool],
        clock: Clock,
        *,
        workload_ttl_s: int = 3600,
    ) -> None:
        if workload_ttl_s < 1:
            raise ValueError("workload_ttl_s must be at least 1 s")
        self._ca = ca
        self._tokens = tokens
        self._keys = keys
        self._revocations = revocations
        self._audit = audit
        self._site_exists = site_exists
        self._clock = clock
        self._workload_ttl_s = workload_ttl_s

    # enrollment --------------------------------------------------------------------------------

    def enroll(
        self, site_id: str, token: str, csr_der: bytes, signing_public_key: bytes
    ) -> EnrollmentResult:
        """Enrol site ``site_id``; RefusedError (audited) if anything is wrong."""
        context: dict[str, str | int | float | bool] = {
            "site_id": str(site_id)[:80],
            "token_id": token_id(token),
        }
        with _Audited(self._audit, ENROLLMENT_EVENT, context) as audited:
            spiffe_id = self._site_identity(site_id)
            audited.identity = spiffe_id.uri
            self._tokens.check(token, site_id)
            verify_csr(csr_der)
            raw_key = self._check_signing_key(spiffe_id, signing_public_key)
            self._refuse_if_revoked_this_second(spiffe_id)
            self._tokens.redeem(token, site_id)

            issued = self._ca.issue_from_csr(csr_der, spiffe_id, ttl_s=self._workload_ttl_s)
            now_ms = self._clock.now_ms()
            try:
                key_id = self._keys.enroll(spiffe_id, raw_key, now_ms)
            except ValueError as e:  # lost a race for the key to another identity
                raise _refused(Reason.CSR_INVALID, str(e)) from None
            retired = self._keys.retire_other_keys(spiffe_id, key_id, now_ms)
            audited.allow(
                serial=f"{issued.serial:x}",
                not_before_ms=issued.not_before_ms,
                not_after_ms=issued.not_after_ms,
                signing_key_id=key_id,
                retired_signing_keys=retired,
            )
        return EnrollmentResult(
            spiffe_id=spiffe_id,
            chain_pem=issued.chain_pem,
            trust_bundle_pem=self._ca.trust_bundle_pem(),
            signing_key_id=key_id,
        )

    def _site_identity(self, site_id: str) -> SpiffeId:
        try:
            spiffe_id = SpiffeId(self._ca.trust_domain, Role.EDGE, site_id)
        except ValueError:
            raise _refused(Reason.SITE_UNKNOWN, "site id is not a valid name") from None
        if not self._site_exists(site_id):
            raise _refused(Reason.SITE_UNKNOWN, "no such site")
        return spiffe_id

    def _check_signing_key(self, spiffe_id: SpiffeId, signing_public_key: bytes) -> bytes:
        try:
            load_signing_public_key(signing_public_key)
        except ValueError as e:
            raise _refused(Reason.CSR_INVALID, str(e)) from None
        bound = self._keys.bound_identity(signing_public_key)
        if bound is not None and bound != spiffe_id:
            raise _refused(
                Reason.CSR_INVALID, "signing public key is already enrolled for another identity"
            )
        return signing_public_key

    def _refuse_if_revoked_this_second(self, spiffe_id: SpiffeId) -> None:
        not_before_ms = self._clock.now_ms() // 1000 * 1000
        if self._revocations.is_revoked(spiffe_id, not_before_ms):
            raise _refused(
                Reason.IDENTITY_REVOKED,
                "identity was revoked less than a second ago; retry in a second",
            )

    # renewal -----------------------------------------------------------------------------------

    def renew(
        self,
        spiffe_id: SpiffeId,
        csr_der: bytes,
        *,
        presented_not_before_ms: int | None = None,
    ) -> IssuedCertificate:
        """A fresh workload certificate for an authenticated ``spiffe_id``.

        ``presented_not_before_ms`` [ms] is the ``notBefore`` of the certificate
        the caller authenticated with; pass it whenever it is known, and the
        renewal is refused iff that certificate is revoked. Without it, the
        renewal is refused if the identity was revoked at or after the second
        of its latest enrollment (so a re-enrolled site can renew again).
        """
        context: dict[str, str | int | float | bool] = {}
        with _Audited(self._audit, RENEWAL_EVENT, context) as audited:
            if not isinstance(spiffe_id, SpiffeId):
                raise _refused(Reason.BAD_SPIFFE_ID, "renewal needs a SPIFFE ID")
            audited.identity = spiffe_id.uri
            if spiffe_id.trust_domain != self._ca.trust_domain:
                raise _refused(Reason.WRONG_TRUST_DOMAIN, "identity is from another trust domain")
            if self._is_revoked(spiffe_id, presented_not_before_ms):
                raise _refused(Reason.IDENTITY_REVOKED, "identity has been revoked")
            issued = self._ca.issue_from_csr(csr_der, spiffe_id, ttl_s=self._workload_ttl_s)
            audited.allow(
                serial=f"{issued.serial:x}",
                not_before_ms=issued.not_before_ms,
                not_after_ms=issued.not_after_ms,
            )
        return issued

    def _is_revoked(self, spiffe_id: SpiffeId, presented_not_before_ms: int | None) -> bool:
        if presented_not_before_ms is not None:
            return self._revocations.is_revoked(spiffe_id, presented_not_before_ms)
        latest_revocation_ms = self._revocations.latest_revocation_ms(spiffe_id)
        if latest_revocation_ms is None:
            return False
        last_enrolled_ms = self._keys.last_enrolled_ms(spiffe_id)
        if last_enrolled_ms is None:
            return True
        # The certificate of that enrollment has notBefore rounded down to the second.
        return latest_revocation_ms >= last_enrolled_ms // 1000 * 1000


def _refused(reason: Reason, message: str) -> RefusedError:
    return RefusedError(Refusal(reason, message))


class _Audited:
    """Audits exactly one outcome of a block: ``allow(...)``, a refusal, or an internal error.

    Refusals raised inside the block are re-raised with the identity and the
    request context filled in, after being recorded.
    """

    def __init__(
        self, audit: AuditLog, event: str, context: dict[str, str | int | float | bool]
    ) -> None:
        self._audit = audit
        self._event = event
        self._context = context
        self.identity = ""

    def __enter__(self) -> _Audited:
        return self

    def allow(self, **details: str | int) -> None:
        self._audit.append(
            self._event,
            decision="allow",
            identity=self.identity,
            details={**self._context, **details},
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, RefusedError):
            refusal = dataclasses.replace(
                exc.refusal,
                identity=exc.refusal.identity or self.identity,
                details={**self._context, **exc.refusal.details},
            )
            self._audit.record_refusal(refusal, event=self._event)
            raise RefusedError(refusal) from None
        if isinstance(exc, Exception):
            self._audit.record_refusal(
                Refusal(Reason.INTERNAL, "internal error", self.identity, dict(self._context)),
                event=self._event,
            )
