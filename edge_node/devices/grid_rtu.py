"""Substation RTU adapter: whole, consistent grid snapshots over OPC UA, as telemetry.

Information model (namespace ``urn:gridfort:sim:grid-rtu``, object ``GridRTU``
under ``Objects``):

==================  ========  ====================================================
browse name         type      meaning
==================  ========  ====================================================
``GridName``        String    the grid model measured, e.g. ``cigre_mv``
``<column>``        Double    one per measurement-layout column (``detection.layout``),
                              e.g. ``bus3.vm_pu`` [p.u.], ``bus3.p_mw`` [MW],
                              ``line0.q_from_mvar`` [Mvar]; grid-model signs
``SnapshotTimeMs``  Int64     sample time of the snapshot, Unix epoch [ms]
``SnapshotSeq``     UInt64    snapshot number, +1 per snapshot
==================  ========  ====================================================

Consistency protocol (a sequence lock): to publish a snapshot the RTU first marks
``SnapshotSeq`` *Uncertain* (update in progress), writes every column, then
``SnapshotTimeMs``, and writes the new ``SnapshotSeq`` (Good) last. The adapter
reads ``[SnapshotSeq, every column, SnapshotTimeMs, SnapshotSeq]`` in ONE Read
request and accepts it only if both sequence reads are Good and equal; otherwise
the read was torn and is retried. A Bad ``SnapshotSeq`` means the RTU has no
valid snapshot (e.g. its measurement source failed): a ``DeviceError`` naming the
status. A snapshot already returned is not returned again (``read`` gives ``[]``),
so each snapshot lands in exactly one telemetry batch; a snapshot older than
``max_age_s`` is an error.

Readings: one per column, mapped by ``detection.points.grid_points`` (asset
``{grid}.bus3``, quantity, canonical unit; value = layout value * scale: MW -> kW,
Mvar -> kvar), every one stamped with the snapshot's ``SnapshotTimeMs``.

Every OPC UA failure leaves this module as a ``DeviceError`` whose message names
the device, the operation and a status-code name or error category.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds

from detection.points import GridPoint, grid_points
from edge_node.devices.base import AppliedSetpoint, AssetKind, DeviceError, DeviceLimits, Reading
from edge_node.devices.opcua import (
    OpcUaClientSecurity,
    OpcUaIo,
    _is_builtin_type,
    _is_loopback,
    _Sample,
    _sample,
    _set_security,
    _type_name,
)

_log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:gridfort:sim:grid-rtu"
OBJECT_NAME = "GridRTU"
GRID_NAME = "GridName"
SNAPSHOT_SEQ = "SnapshotSeq"
SNAPSHOT_TIME = "SnapshotTimeMs"
#: The RTU's own variables besides the measurement columns, with their types.
STATUS_VARIABLES: tuple[tuple[str, ua.VariantType], ...] = (
    (GRID_NAME, ua.VariantType.String),
    (SNAPSHOT_SEQ, ua.VariantType.UInt64),
    (SNAPSHOT_TIME, ua.VariantType.Int64),
)
_SESSION_TIMEOUT_MS = 60_000


@functools.cache
def layout_columns(grid: str) -> tuple[str, ...]:
    """The measurement-layout columns of ``grid`` (builds the grid model once per process)."""
    from detection.grid import load_grid
    from detection.layout import measurement_columns

    return tuple(measurement_columns(load_grid(grid)))


@dataclass(slots=True)
class GridRtuStats:
    """Counters of one adapter: snapshots returned, torn reads retried, repeats skipped."""

    snapshots: int = 0
    torn_reads: int = 0
    repeats: int = 0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    seq: int
    ts_ms: int
    values: list[float]


class GridRtu(OpcUaIo):
    """``DeviceAdapter`` for a substation RTU presenting the model above over OPC UA.

    Parameters
    ----------
    asset_id : str
        The device's id on this edge (its readings carry the grid points' ids).
    endpoint_url : str
        ``opc.tcp://host:port/path`` of the RTU.
    grid : str
        The grid model it measures (``detection.grid.GRID_NAMES``).
    timeout_s : float
        Budget for each request and every step of ``connect`` [s].
    security : OpcUaClientSecurity | None
        Basic256Sha256 SignAndEncrypt settings (as for the EV charger); None means
        unencrypted, refused off loopback unless ``allow_insecure``.
    columns : Sequence[str] | None
        The layout columns to read (default: the grid's whole layout).
    max_age_s : float
        Oldest acceptable snapshot, against ``read``'s ``now_ms`` [s].
    max_attempts : int
        Reads per ``read`` before a snapshot that keeps changing is an error.
    """

    def __init__(
        self,
        asset_id: str,
        endpoint_url: str,
        grid: str,
        timeout_s: float = 2.0,
        *,
        security: OpcUaClientSecurity | None = None,
        allow_insecure: bool = False,
        columns: Sequence[str] | None = None,
        max_age_s: float = 30.0,
        max_attempts: int = 4,
    ) -> None:
        url = urlparse(endpoint_url)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError("endpoint_url must look like opc.tcp://host:port/path")
        if security is None and not allow_insecure and not _is_loopback(url.hostname):
            raise ValueError("an unencrypted OPC UA session needs allow_insecure=True off loopback")
        if not (math.isfinite(timeout_s) and timeout_s > 0.0):
            raise ValueError("timeout_s must be > 0")
        if not (math.isfinite(max_age_s) and max_age_s > 0.0):
            raise ValueError("max_age_s must be > 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._asset_id = asset_id
        self._endpoint_url = endpoint_url
        self._where = f"{url.hostname}:{url.port or 4840}"
        self._grid = grid
        self._columns = tuple(columns) if columns is not None else layout_columns(grid)
        self._points: list[GridPoint] = grid_points(grid, list(self._columns))
        self._timeout_s = timeout_s
        self._security = security
        self._max_age_ms = round(max_age_s * 1000)
        self._max_attempts = max_attempts
        self._client: Client | None = None
        self._snapshot_nodes: list[Node] = []
        self._last: tuple[int, int] | None = None  # (seq, ts_ms) of the last snapshot returned
        self.stats = GridRtuStats()

    @property
    def asset_id(self) -> str:
        return self._asset_id

    @property
    def kind(self) -> AssetKind:
        return AssetKind.GRID_RTU

    @property
    def columns(self) -> tuple[str, ...]:
        """The layout columns read, in reading order."""
        return self._columns

    @property
    def last_seq(self) -> int | None:
        """``SnapshotSeq`` of the last snapshot returned by ``read`` (None before one)."""
        return None if self._last is None else self._last[0]

    # -- error mapping -------------------------------------------------------

    # -- connect -------------------------------------------------------------

    async def connect(self) -> DeviceLimits:
        """Open a session, find and check every variable, and the grid it measures.

        An RTU is a metering device: its limits allow no setpoint (0 kW).
        """
        await self.close()
        client = Client(self._endpoint_url, timeout=self._timeout_s)
        client.name = client.description = f"Gridfort edge {self._asset_id}"
        client.session_timeout = _SESSION_TIMEOUT_MS
        try:
            if self._security is not None:
                client.application_uri = self._security.application_uri
                await self._io("loading certificates", _set_security(client, self._security))
            await self._io("connect", client.connect())
            self._client = client
            nodes = await self._resolve_model(client)
            await self._check_grid(client, nodes[GRID_NAME])
        except BaseException:
            await self._teardown(client)
            self._forget()
            raise
        seq, when = nodes[SNAPSHOT_SEQ], nodes[SNAPSHOT_TIME]
        self._snapshot_nodes = [seq, *(nodes[c] for c in self._columns), when, seq]
        return DeviceLimits(rated_p_kw=0.0)

    async def _resolve_model(self, client: Client) -> dict[str, Node]:
        """Find every variable by browse path and check its class and data type."""
        uris = await self._io("namespace lookup", client.get_namespace_array())
        if NAMESPACE_URI not in uris:
            raise DeviceError(
                f"{self._asset_id}: device model mismatch: namespace {NAMESPACE_URI} not offered"
            )
        ns = uris.index(NAMESPACE_URI)
        wanted = [*STATUS_VARIABLES, *((c, ua.VariantType.Double) for c in self._columns)]
        paths = [[f"{ns}:{OBJECT_NAME}", f"{ns}:{name}"] for name, _ in wanted]
        found = await self._io(
            "browse", client.nodes.objects.get_children_by_path(paths, raise_on_partial_error=False)
        )
        nodes = {
            name: hits[0]
            for (name, _), hits in zip(wanted, found, strict=True)
            if hits and hits[0] is not None
        }
        missing = [name for name, _ in wanted if name not in nodes]
        if missing:
            shown = ", ".join(f"{OBJECT_NAME}/{name}" for name in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DeviceError(
                f"{self._asset_id}: device model mismatch: missing node(s) {shown}{more}"
            )
        ordered = [nodes[name] for name, _ in wanted]
        classes = await self._io(
            "reading node classes", client.read_attributes(ordered, AttributeIds.NodeClass)
        )
        types = await self._io(
            "reading data types", client.read_attributes(ordered, AttributeIds.DataType)
        )
        for (name, vtype), cls_dv, type_dv in zip(wanted, classes, types, strict=True):
            mismatch = f"{self._asset_id}: device model mismatch: {OBJECT_NAME}/{name}"
            if _sample(cls_dv).value != ua.NodeClass.Variable.value:
                raise DeviceError(f"{mismatch} is not a variable")
            datatype = _sample(type_dv).value
            if not _is_builtin_type(datatype, vtype):
                raise DeviceError(
                    f"{mismatch} has type {_type_name(datatype)}, expected {vtype.name}"
                )
        return nodes

    async def _check_grid(self, client: Client, node: Node) -> None:
        dv = await self._io(f"reading {GRID_NAME}", node.read_data_value())
        served = _sample(dv)
        if not served.status.is_good() or served.value != self._grid:
            shown = served.value if served.status.is_good() else served.status.name
            raise DeviceError(
                f"{self._asset_id}: the RTU measures grid {shown!r}, configured {self._grid!r}"
            )

    # -- reading -------------------------------------------------------------

    def _live(self) -> Client:
        client = self._client
        if client is None or not self._snapshot_nodes:
            raise DeviceError(f"{self._asset_id}: not connected")
        if client.state is not UaClientState.CONNECTED:
            raise self._error("session", "connection lost")
        return client

    async def read(self, now_ms: int) -> list[Reading]:
        """The RTU's latest snapshot as readings stamped with its sample time; ``[]`` if
        it was already returned. ``now_ms`` [ms] is only used to judge its age."""
        client = self._live()
        snapshot: _Snapshot | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                self.stats.torn_reads += 1
                await asyncio.sleep(0.01 * attempt)  # let the RTU finish its update
            values = await self._io(
                "reading the snapshot", client.read_attributes(self._snapshot_nodes)
            )
            snapshot = self._decode(values)
            if snapshot is not None:
                break
        if snapshot is None:
            raise DeviceError(
                f"{self._asset_id}: the snapshot kept changing during "
                f"{self._max_attempts} reads at {self._where}"
            )
        age_ms = now_ms - snapshot.ts_ms
        if age_ms > self._max_age_ms:
            raise DeviceError(
                f"{self._asset_id}: the RTU's latest snapshot (seq {snapshot.seq}) is "
                f"{age_ms / 1000:.1f} s old; the limit is {self._max_age_ms / 1000:.1f} s"
            )
        if (snapshot.seq, snapshot.ts_ms) == self._last:
            self.stats.repeats += 1
            return []
        self._last = (snapshot.seq, snapshot.ts_ms)
        self.stats.snapshots += 1
        ts = snapshot.ts_ms
        return [
            Reading(p.asset_id, p.quantity, p.unit, v * p.scale, ts)
            for p, v in zip(self._points, snapshot.values, strict=True)
        ]

    def _decode(self, dvs: list[ua.DataValue]) -> _Snapshot | None:
        """One read's snapshot; None if it was torn (the RTU was updating)."""
        if len(dvs) != len(self._snapshot_nodes):
            raise self._error("reading the snapshot", "wrong number of results")
        first, last = _sample(dvs[0]), _sample(dvs[-1])
        if last.status.is_bad():
            raise DeviceError(
                f"{self._asset_id}: the RTU has no valid snapshot "
                f"({SNAPSHOT_SEQ} is {last.status.name})"
            )
        if not (first.status.is_good() and last.status.is_good()) or first.value != last.value:
            return None
        seq = self._good_int(SNAPSHOT_SEQ, last)
        ts_ms = self._good_int(SNAPSHOT_TIME, _sample(dvs[-2]))
        cells = zip(self._columns, dvs[1:-2], strict=True)
        values = [self._good_float(c, _sample(dv)) for c, dv in cells]
        return _Snapshot(seq, ts_ms, values)

    def _good_int(self, name: str, sample: _Sample) -> int:
        value = sample.value
        if not sample.status.is_good():
            raise DeviceError(f"{self._asset_id}: {OBJECT_NAME}/{name} is {sample.status.name}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise DeviceError(f"{self._asset_id}: {OBJECT_NAME}/{name} is not an integer")
        return value

    def _good_float(self, name: str, sample: _Sample) -> float:
        value = sample.value
        if not sample.status.is_good():
            raise DeviceError(f"{self._asset_id}: {OBJECT_NAME}/{name} is {sample.status.name}")
        if isinstance(value, bool) or not isinstance(value, float):
            raise DeviceError(f"{self._asset_id}: {OBJECT_NAME}/{name} is not a Double")
        if not math.isfinite(value):
            raise DeviceError(f"{self._asset_id}: {OBJECT_NAME}/{name} is not finite")
        return value

    # -- DeviceAdapter -------------------------------------------------------

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        """Always refused: an RTU measures the grid and takes no setpoints."""
        raise DeviceError(
            f"{self._asset_id}: a grid RTU is a metering device; it takes no setpoint"
        )

    async def close(self) -> None:
        """Disconnect; safe to call any number of times."""
        client = self._client
        self._forget()
        if client is not None:
            await self._teardown(client)

    def _forget(self) -> None:
        self._client = None
        self._snapshot_nodes = []

    async def _teardown(self, client: Client) -> None:
        try:
            await self._io("disconnect", client.disconnect())
        except DeviceError as exc:
            _log.debug("%s: %s during close", self._asset_id, exc)
