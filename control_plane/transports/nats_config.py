"""The NATS subject scheme, per-identity permissions and the ``nats-server`` config text (pure).

Nothing here touches a socket or a file: the functions turn typed inputs into
the config text that :mod:`control_plane.transports.nats_server` writes and
runs, and that ``gridfort nats config`` prints for an operator's own cluster.

Subject scheme (``<site>`` is :func:`site_token` of the site id)::

    gridfort.v1.telemetry.<site>    signed telemetry envelopes, edge -> JetStream stream
    gridfort.v1.ingest.<p>.<site>   the same message as stored: the stream rewrites the subject,
                                    adding the site's partition ``p`` (NATS ``partition()``)
    gridfort.v1.commands.<site>     signed commands, control plane -> edge (core NATS)
    gridfort.v1.workers.<worker>    ingest-worker heartbeats (control planes only)
    _INBOX.edge.<site>.>            the edge's reply inbox (JetStream publish acks)
    _INBOX.cp.<name>.>              a control plane's reply inbox (JetStream API, pull deliveries)

Authentication is the TLS client certificate: ``verify_and_map`` maps a
verified certificate to the user whose name equals one of its subject
alternative names. The server tries e-mail SANs, then DNS SANs, and only then
URI SANs, so every *client* certificate must carry the SPIFFE ID as its only
SAN (the CA issues edges and operators exactly that; a control plane connects
with a dedicated client certificate without DNS names, never with its server
certificate). Users are SPIFFE IDs; a certificate that maps to no user is
refused at connect (default deny; there is deliberately no ``no_auth_user``).
Each user gets an explicit allow list; everything not allowed is denied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from security.identity import Role, SpiffeId, validate_name
from security.refusals import ConfigError

SUBJECT_ROOT = "gridfort.v1"
TELEMETRY_PREFIX = f"{SUBJECT_ROOT}.telemetry"
COMMAND_PREFIX = f"{SUBJECT_ROOT}.commands"
#: Stored subjects: ``gridfort.v1.ingest.<partition>.<site>`` (see :func:`partition_transform`).
INGEST_PREFIX = f"{SUBJECT_ROOT}.ingest"
#: Ingest-worker heartbeats: ``gridfort.v1.workers.<worker>`` (core NATS, control planes only).
WORKERS_PREFIX = f"{SUBJECT_ROOT}.workers"
#: Partitions of the telemetry stream: one durable consumer each, each processed by one
#: ingest worker at a time. Fixed per deployment (the stream records it in its metadata).
DEFAULT_PARTITIONS = 8
MAX_PARTITIONS = 1024
#: Per-site cap on unconsumed messages in the stream (``max_msgs_per_subject`` with
#: ``discard_new_per_subject``): a flooding site is refused at the broker while every
#: other site keeps publishing. An honest edge has at most its window (256) in flight.
DEFAULT_MAX_MSGS_PER_SITE = 1024
#: The JetStream stream that holds every site's telemetry until a control plane commits it.
STREAM_NAME = "GRIDFORT_TELEMETRY"
#: Subjects captured by :data:`STREAM_NAME`: one token per site, so ``a.b`` cannot alias.
STREAM_SUBJECTS = (f"{TELEMETRY_PREFIX}.*",)
INBOX_ROOT = "_INBOX"
#: JetStream de-duplication id of a published envelope (SHA-256 of its exact bytes).
MSG_ID_HEADER = "Nats-Msg-Id"
#: The batch's sequence number: an unsigned ordering hint for the consumer (the signed
#: payload stays authoritative; the subject proves who published it).
SEQ_HEADER = "Gridfort-Seq"

#: NATS's own default (1 MiB), written explicitly: a signed batch is at most
#: ``max_batch_bytes`` (512 KiB by default) plus the envelope, so 1 MiB fits with room,
#: and nothing larger ever reaches a stream, a consumer or the ingest pipeline.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
#: NATS default sync interval (``2m``). See docs/nats.md: Gridfort's end-to-end commit
#: receipts make a lost-but-acknowledged JetStream write harmless (the edge resends).
DEFAULT_SYNC_INTERVAL = "2m"
DEFAULT_TLS_TIMEOUT_S = 2.0
MONITOR_HOST = "127.0.0.1"

_DURATION_RE = re.compile(r"[0-9]+(ms|s|m|h)")
# Characters the NATS config lexer treats specially inside a quoted string.
_UNSAFE_CHARS_RE = re.compile(r'["\\$\x00-\x1f\x7f]')


# -- subjects ------------------------------------------------------------------------------------


def site_token(site_id: str) -> str:
    """The subject token of ``site_id``: the id with every ``.`` replaced by ``~``.

    Site ids may contain ``.``, the NATS token separator; left as is, site ``a``'s
    inbox ``_INBOX.edge.a.>`` would also cover site ``a.b``'s inbox. ``~`` is not
    allowed in site ids, so the mapping is injective; ``*``, ``>`` and white
    space cannot occur (ValueError for an invalid site id).
    """
    return validate_name(site_id).replace(".", "~")


def telemetry_subject(site_id: str) -> str:
    """``gridfort.v1.telemetry.<site>``: where edge ``site_id`` publishes its signed envelopes."""
    return f"{TELEMETRY_PREFIX}.{site_token(site_id)}"


def command_subject(site_id: str) -> str:
    """``gridfort.v1.commands.<site>``: where edge ``site_id`` receives signed commands."""
    return f"{COMMAND_PREFIX}.{site_token(site_id)}"


def partition_transform(partitions: int) -> tuple[str, str]:
    """(source, destination) of the stream's subject transform for ``partitions`` partitions.

    ``gridfort.v1.telemetry.<site>`` is stored as ``gridfort.v1.ingest.<p>.<site>`` with
    ``p = partition(partitions, <site>)``, NATS's deterministic hash of the site token:
    every message of one site lands in the same partition, in publish order. Edges keep
    publishing on their own subject (permissions are checked before the transform).
    """
    _check_partitions(partitions)
    return (
        f"{TELEMETRY_PREFIX}.*",
        f"{INGEST_PREFIX}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}",
    )


def partition_filter(partition: int) -> str:
    """``gridfort.v1.ingest.<partition>.*``: the filter subject of one partition's consumer."""
    if partition < 0:
        raise ValueError("partition must be >= 0")
    return f"{INGEST_PREFIX}.{partition}.*"


def partition_consumer(partition: int) -> str:
    """``ingest-p<partition>``: the durable pull consumer of one partition."""
    if partition < 0:
        raise ValueError("partition must be >= 0")
    return f"ingest-p{partition}"


def worker_subject(worker_id: str) -> str:
    """``gridfort.v1.workers.<worker>``: where an ingest worker announces itself."""
    return f"{WORKERS_PREFIX}.{site_token(worker_id)}"


def _check_partitions(partitions: int) -> None:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"nats partitions: must be between 1 and {MAX_PARTITIONS}")


def inbox_prefix(spiffe_id: SpiffeId) -> str:
    """The reply-inbox prefix a client of ``spiffe_id`` must pass to nats-py (``inbox_prefix=``).

    ``_INBOX.edge.<site>`` for edges, ``_INBOX.cp.<name>`` for control planes: each
    identity may subscribe only below its own prefix, so nobody can read another
    identity's publish acknowledgements or pull deliveries. Other roles have no inbox.
    """
    if spiffe_id.role is Role.EDGE:
        return f"{INBOX_ROOT}.edge.{site_token(spiffe_id.name)}"
    if spiffe_id.role is Role.CONTROL_PLANE:
        return f"{INBOX_ROOT}.cp.{site_token(spiffe_id.name)}"
    raise ValueError(f"{spiffe_id} has no NATS inbox: only edges and control planes connect")


# -- permissions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Permissions:
    """Subjects an identity may publish to and subscribe to; everything else is denied."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class NatsUser:
    """One ``authorization.users`` entry: a SPIFFE ID (the mapped user name) and its permissions."""

    spiffe_id: SpiffeId
    permissions: Permissions


def edge_permissions(site_id: str) -> Permissions:
    """What edge ``site_id`` needs, and nothing more.

    * publish ``gridfort.v1.telemetry.<site>``: its own telemetry, exactly that
      subject (no wildcard). A JetStream publish is a request on this subject with a
      reply inbox; the stream answers with the publish ack. No ``$JS.API`` access is
      needed to publish, and none is granted (an edge cannot create, read, purge or
      delete streams or consumers).
    * subscribe ``gridfort.v1.commands.<site>``: its own commands.
    * subscribe ``_INBOX.edge.<site>.>``: its own reply inbox, where the publish
      acks arrive (nats-py must be given :func:`inbox_prefix`).
    """
    return Permissions(
        publish=(telemetry_subject(site_id),),
        subscribe=(command_subject(site_id), f"{inbox_prefix(_edge(site_id))}.>"),
    )


def control_plane_permissions(name: str, stream: str = STREAM_NAME) -> Permissions:
    """What a control-plane instance needs to run durable pull consumers on ``stream``.

    Publish:

    * ``$JS.API.INFO``: account info (clients probe JetStream availability with it);
    * ``$JS.API.STREAM.{CREATE,UPDATE,INFO}.<stream>``: create the stream at start and
      reconcile its config; never ``DELETE``/``PURGE``/``MSG.DELETE``, so even a
      compromised control plane cannot erase uncommitted telemetry through the API;
    * ``$JS.API.CONSUMER.CREATE.<stream>.>`` and ``...DURABLE.CREATE.<stream>.*``:
      create/bind the durable consumer (servers >= 2.9 use the first form, which
      carries the consumer name and filter subject);
    * ``$JS.API.CONSUMER.INFO.<stream>.*``: bind to an existing consumer;
    * ``$JS.API.CONSUMER.MSG.NEXT.<stream>.*``: pull-fetch batches;
    * ``$JS.ACK.<stream>.>``: ack / nak / in-progress / term each delivered message;
    * ``gridfort.v1.commands.*``: publish signed commands to any site;
    * ``gridfort.v1.workers.*``: ingest-worker heartbeats (partition assignment).

    Subscribe: ``_INBOX.cp.<name>.>`` (API replies and pulled messages are delivered
    to the client's own inbox) and ``gridfort.v1.workers.*`` (the other workers'
    heartbeats). A control plane never reads telemetry with a core subscription: it
    consumes from the stream.
    """
    js = "$JS.API"
    return Permissions(
        publish=(
            f"{js}.INFO",
            f"{js}.STREAM.CREATE.{stream}",
            f"{js}.STREAM.UPDATE.{stream}",
            f"{js}.STREAM.INFO.{stream}",
            f"{js}.CONSUMER.CREATE.{stream}.>",
            f"{js}.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"{js}.CONSUMER.INFO.{stream}.*",
            f"{js}.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>",
            f"{COMMAND_PREFIX}.*",
            f"{WORKERS_PREFIX}.*",
        ),
        subscribe=(
            f"{inbox_prefix(SpiffeId('x', Role.CONTROL_PLANE, name))}.>",
            f"{WORKERS_PREFIX}.*",
        ),
    )


def _edge(site_id: str) -> SpiffeId:
    # The trust domain does not appear in subjects; any valid one will do here.
    return SpiffeId("x", Role.EDGE, site_id)


def users_for(
    trust_domain: str, site_ids: Iterable[str], control_plane_names: Iterable[str]
) -> tuple[NatsUser, ...]:
    """One user per edge site and per control-plane instance, sorted by SPIFFE ID.

    Operators and SOC identities get no user, so their certificates (valid, from our
    CA) are refused at connect: nobody outside this list can do anything.
    """
    users = [
        NatsUser(SpiffeId(trust_domain, Role.EDGE, s), edge_permissions(s)) for s in set(site_ids)
    ]
    users += [
        NatsUser(SpiffeId(trust_domain, Role.CONTROL_PLANE, n), control_plane_permissions(n))
        for n in set(control_plane_names)
    ]
    return tuple(sorted(users, key=lambda u: u.spiffe_id.uri))


# -- the server config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSettings:
    """The ``cluster`` block of one node: routes between brokers over mutual TLS.

    ``port`` [TCP] is where this node accepts routes; ``routes`` are the other nodes
    (``tls://host:port``). Routes present the node's own certificate and must chain
    to the trust bundle *and* map (``verify_and_map``) to ``route_user``, the brokers'
    SPIFFE ID: a valid certificate of an edge or a control plane cannot join the
    cluster (it would see every message).
    """

    name: str
    host: str
    port: int
    routes: tuple[str, ...]
    route_user: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ConfigError(f"nats cluster name: invalid name {self.name!r}")
        if not self.host or _UNSAFE_CHARS_RE.search(self.host) or " " in self.host:
            raise ConfigError(f"nats cluster host: invalid host {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"nats cluster port: must be 1..65535, got {self.port}")
        for route in self.routes:
            if not re.fullmatch(r"(tls|nats)://[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}", route):
                raise ConfigError(f"nats cluster routes: invalid route URL {route!r}")
        if not self.route_user.startswith("spiffe://") or _UNSAFE_CHARS_RE.search(self.route_user):
            raise ConfigError(f"nats cluster route_user: not a SPIFFE ID: {self.route_user!r}")


@dataclass(frozen=True)
class NatsServerSettings:
    """Everything the generated ``nats-server`` config depends on; validated at construction.

    ``port`` 0 asks nats-server for a random port (written as ``-1``, its convention);
    the adapter reads the chosen port from the server's log. ``monitor_port`` None
    disables the HTTP monitoring endpoint; otherwise it listens on 127.0.0.1 only
    (monitoring is not covered by ``verify_and_map`` and shows every connection's
    identity and subjects, so it must never face a network). ``tls_timeout_s`` [s]
    bounds the TLS handshake. ``sync_interval`` is a NATS duration (``2m``,
    ``500ms``) or ``always``. ``max_payload_bytes`` [B] caps every message.
    ``cluster``: this node's routes to the other nodes of a cluster (None: standalone);
    every node of a cluster needs its own ``server_name``.
    """

    host: str
    port: int
    server_cert_file: Path
    server_key_file: Path
    ca_file: Path
    store_dir: Path
    users: tuple[NatsUser, ...]
    server_name: str = "gridfort-nats"
    monitor_port: int | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    tls_timeout_s: float = DEFAULT_TLS_TIMEOUT_S
    sync_interval: str = DEFAULT_SYNC_INTERVAL
    max_file_store_bytes: int | None = None
    cluster: ClusterSettings | None = None

    def __post_init__(self) -> None:
        if not self.host or _UNSAFE_CHARS_RE.search(self.host) or " " in self.host:
            raise ConfigError(f"nats host: invalid host {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"nats port: must be 0..65535, got {self.port}")
        if self.monitor_port is not None and not 0 <= self.monitor_port <= 65535:
            raise ConfigError(f"nats monitor_port: must be 0..65535, got {self.monitor_port}")
        for name in ("server_cert_file", "server_key_file", "ca_file", "store_dir"):
            path = str(getattr(self, name))
            if not path or _UNSAFE_CHARS_RE.search(path):
                raise ConfigError(f"nats {name}: path {path!r} contains unsupported characters")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.server_name):
            raise ConfigError(f"nats server_name: invalid name {self.server_name!r}")
        if not 1024 <= self.max_payload_bytes <= 64 << 20:
            raise ConfigError("nats max_payload_bytes: must be between 1 KiB and 64 MiB")
        if not 0.1 <= self.tls_timeout_s <= 60:
            raise ConfigError("nats tls_timeout_s: must be between 0.1 and 60 s")
        if self.sync_interval != "always" and not _DURATION_RE.fullmatch(self.sync_interval):
            raise ConfigError(
                f"nats sync_interval: {self.sync_interval!r} is neither 'always' nor a "
                "duration such as 2m, 10s, 500ms"
            )
        if self.max_file_store_bytes is not None and self.max_file_store_bytes < 1 << 20:
            raise ConfigError("nats max_file_store_bytes: must be at least 1 MiB")
        if not self.users:
            raise ConfigError("nats users: at least one identity is required")
        names = [u.spiffe_id.uri for u in self.users]
        if len(set(names)) != len(names):
            raise ConfigError("nats users: duplicate SPIFFE ID")
        for user in self.users:
            for subject in (*user.permissions.publish, *user.permissions.subscribe):
                _check_subject(subject)


def _check_subject(subject: str) -> None:
    tokens = subject.split(".")
    if not subject or any(not t or any(c.isspace() for c in t) for t in tokens):
        raise ConfigError(f"nats permissions: invalid subject {subject!r}")
    if '"' in subject or "\\" in subject or ">" in tokens[:-1]:
        raise ConfigError(f"nats permissions: invalid subject {subject!r}")


def _q(value: str) -> str:
    """A double-quoted config string (inputs are validated to need no escaping)."""
    return json.dumps(value)


def _list(values: Sequence[str], indent: str) -> str:
    inner = "".join(f"{indent}  {_q(v)}\n" for v in values)
    return f"[\n{inner}{indent}]"


def render_config(settings: NatsServerSettings) -> str:
    """The ``nats-server`` config text for ``settings``.

    Choices, each deliberate:

    * ``tls.verify_and_map: true``: a client certificate is required, verified against
      ``ca_file`` (the trust bundle) and mapped to a user by its SAN; no passwords,
      tokens or nkeys exist, so the certificate is the only way in.
    * ``tls.timeout``: a bounded handshake, so a slow-loris peer cannot hold a slot.
    * no ``no_auth_user``: a connection that maps to no user is refused.
    * ``authorization.users``: one entry per identity, allow lists only.
    * ``max_payload``: explicit, enforced by the server (the client is told in INFO).
    * ``jetstream.store_dir`` in the state directory, ``sync_interval`` explicit.
    * ``http``: monitoring on 127.0.0.1 only, or absent.
    * ``max_control_line``: 4 KiB, ample for our subjects, small for abuse.
    * ``cluster`` (optional): routes with mutual TLS, ``verify_and_map`` to the brokers'
      own SPIFFE ID (see :class:`ClusterSettings`).
    """
    s = settings
    lines = [
        "# Generated by Gridfort (control_plane/transports/nats_config.py). Do not edit:",
        "# regenerate with `gridfort nats config`. See docs/nats.md.",
        f"server_name: {_q(s.server_name)}",
        f"host: {_q(s.host)}",
        f"port: {s.port if s.port else -1}",
        f"max_payload: {s.max_payload_bytes}",
        "max_control_line: 4096",
    ]
    if s.monitor_port is not None:
        lines.append(f"http: {_q(f'{MONITOR_HOST}:{s.monitor_port if s.monitor_port else -1}')}")
    lines += [
        "",
        "tls {",
        f"  cert_file: {_q(str(s.server_cert_file))}",
        f"  key_file: {_q(str(s.server_key_file))}",
        f"  ca_file: {_q(str(s.ca_file))}",
        "  verify_and_map: true",
        f"  timeout: {s.tls_timeout_s:g}",
        "}",
        "",
        "jetstream {",
        f"  store_dir: {_q(str(s.store_dir))}",
        f"  sync_interval: {_q(s.sync_interval)}",
    ]
    if s.max_file_store_bytes is not None:
        lines.append(f"  max_file_store: {s.max_file_store_bytes}")
    lines.append("}")
    if s.cluster is not None:
        lines += _render_cluster(s.cluster, s)
    lines += ["", "authorization {", "  users = ["]
    for user in s.users:
        ind = "        "
        lines += [
            "    {",
            f"      user: {_q(user.spiffe_id.uri)}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(user.permissions.publish, ind)} }}",
            f"        subscribe: {{ allow: {_list(user.permissions.subscribe, ind)} }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _render_cluster(c: ClusterSettings, s: NatsServerSettings) -> list[str]:
    return [
        "",
        "cluster {",
        f"  name: {_q(c.name)}",
        f"  host: {_q(c.host)}",
        f"  port: {c.port}",
        f"  routes: {_list(c.routes, '  ')}",
        "  tls {",
        f"    cert_file: {_q(str(s.server_cert_file))}",
        f"    key_file: {_q(str(s.server_key_file))}",
        f"    ca_file: {_q(str(s.ca_file))}",
        "    verify_and_map: true",
        f"    timeout: {s.tls_timeout_s:g}",
        "  }",
        f"  authorization {{ user: {_q(c.route_user)} }}",
        "}",
    ]
