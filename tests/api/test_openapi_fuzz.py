"""Schemathesis explores the real server from the OpenAPI document, as a SOC analyst and an operator.

Every generated request (valid and invalid paths, queries and bodies) must get
an answer the document allows, with the documented content type and schema,
and never a server error (``GRIDFORT_FUZZ_EXAMPLES``, default 25 per operation and role,
explores deeper). Skipped when schemathesis is not installed (pin it in
the dev extra to run it). The control plane runs on its own event loop in a
thread, because schemathesis calls with blocking ``requests``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from control_plane.api.openapi import openapi_document
from control_plane.embedded import EmbeddedSystem
from security.identity import Role, SpiffeId
from tests.conftest import TRUST_DOMAIN

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

schema = schemathesis.openapi.from_dict(openapi_document())


@dataclass(frozen=True)
class Live:
    url: str
    bundle: str
    certs: dict[Role, tuple[str, str]]  # (chain PEM path, key PEM path)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="control-plane", daemon=True)
    thread.start()
    system = EmbeddedSystem(tmp / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False)
    asyncio.run_coroutine_threadsafe(system.start(), loop).result(60)
    try:
        cp = system.control_plane
        bundle = tmp / "bundle.pem"
        bundle.write_bytes(cp.ca.trust_bundle_pem())
        certs = {}
        for role in (Role.SOC, Role.OPERATOR):
            key_pem, issued = cp.ca.issue_with_new_key(SpiffeId(TRUST_DOMAIN, role, "fuzz"))
            cert, key = tmp / f"{role.value}.pem", tmp / f"{role.value}.key"
            cert.write_bytes(issued.chain_pem)
            key.write_bytes(key_pem)
            certs[role] = (str(cert), str(key))
        yield Live(system.api_url, str(bundle), certs)
    finally:
        asyncio.run_coroutine_threadsafe(system.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@schema.parametrize()  # type: ignore[untyped-decorator]  # schemathesis is optional here
@settings(
    max_examples=int(os.environ.get("GRIDFORT_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_requests_get_documented_answers(case: Any, live: Live) -> None:
    for cert in live.certs.values():  # schemathesis sets verify itself: pass both per call
        case.call_and_validate(base_url=live.url, cert=cert, verify=live.bundle, timeout=10)
