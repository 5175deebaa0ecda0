"""A real OPC UA server for a substation RTU measuring a simulated grid (asyncua).

It publishes the information model declared in ``edge_node.devices.grid_rtu``
(namespace ``urn:gridfort:sim:grid-rtu``, object ``GridRTU``: ``GridName``, one
read-only Double per measurement-layout column named after it, ``SnapshotTimeMs``,
``SnapshotSeq``) and every ``interval_s`` advances its
:class:`~edge_node.simulators.grid_sim.GridSimulator` by one power flow (in a
worker thread, so the event loop never waits for pandapower) and publishes the
result with the sequence-lock protocol described there: ``SnapshotSeq`` marked
Uncertain, every column, ``SnapshotTimeMs``, then the new ``SnapshotSeq`` last.

A step that fails (the power flow does not converge, a site's power cannot be
read) publishes no values: ``SnapshotSeq`` turns ``BadSensorFailure`` (an
unexpected error: ``BadInternalError``), so clients get a clear error rather than
stale or invented data; :attr:`GridRtuSimulator.last_error` says why. The next
good step publishes normally again.

Security modes as the EV charger simulator (``edge_node.simulators.opcua_server``):
``"sign_encrypt"`` (default, Basic256Sha256 SignAndEncrypt, only pinned client
application certificates admitted, checked at session creation and again at
activation) or ``"none"`` (loopback tests).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from edge_node.devices.grid_rtu import (
    NAMESPACE_URI,
    OBJECT_NAME,
    SNAPSHOT_SEQ,
    SNAPSHOT_TIME,
    STATUS_VARIABLES,
)
from edge_node.simulators.grid_sim import GridSimulationError, GridSimulator, GridSnapshot
from edge_node.simulators.opcua_server import (
    OpcUaSimulatorServer,
    SecurityMode,
)
from security.clock import Clock

_log = logging.getLogger(__name__)

SERVER_APPLICATION_URI = "urn:gridfort:sim:grid-rtu:server"
ENDPOINT_PATH = "/gridfort/grid-rtu/"

_UPDATING = ua.StatusCode(ua.UInt32(StatusCodes.UncertainLastUsableValue))
_SENSOR_FAILURE = ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure))
_INTERNAL_ERROR = ua.StatusCode(ua.UInt32(StatusCodes.BadInternalError))
_NO_DATA_YET = ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))
_UNITS = {"pu": "p.u.", "mw": "MW", "mvar": "Mvar"}


def _unit(column: str) -> str:
    return _UNITS[column.rsplit("_", 1)[-1]]


class GridRtuSimulator(OpcUaSimulatorServer):
    """An OPC UA server simulating a substation RTU over a :class:`GridSimulator`.

    Parameters
    ----------
    grid : GridSimulator
        The simulated grid (sites attached, attacks injected through it).
    clock : Clock
        Stamps every snapshot (``SnapshotTimeMs``) [ms, Unix epoch].
    sim_clock : Clock | None
        Drives the grid's time of day (default ``clock``; the demo passes its
        accelerated simulation clock).
    interval_s : float
        Wall-clock period between snapshots [s].
    host, port : str, int
        Where to listen; port 0 picks a free port (see ``start``).
    security : "none" | "sign_encrypt"
        Endpoint security (see the module docstring).
    server_cert_path, server_key_path : Path | None
        The server's certificate and key; generated into ``state_dir`` if None.
    trusted_client_certs : Sequence[Path]
        Client application certificates (DER or PEM) admitted in sign_encrypt mode.
    state_dir : Path | None
        Where generated files go; a temporary directory (removed on stop) if None.
    history : int
        How many served snapshots :meth:`served` keeps.
    """

    SERVER_NAME = "Gridfort grid RTU simulator"
    APPLICATION_URI = SERVER_APPLICATION_URI
    ENDPOINT_PATH = ENDPOINT_PATH
    CERT_NAME = "grid-rtu-sim"
    TASK_NAME = "grid-rtu-steps"
    WHAT = "grid RTU simulator"

    def __init__(
        self,
        grid: GridSimulator,
        *,
        clock: Clock,
        sim_clock: Clock | None = None,
        interval_s: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        security: SecurityMode = "sign_encrypt",
        server_cert_path: Path | None = None,
        server_key_path: Path | None = None,
        trusted_client_certs: Sequence[Path] = (),
        state_dir: Path | None = None,
        history: int = 64,
    ) -> None:
        self._init_server(
            clock=clock,
            host=host,
            port=port,
            security=security,
            server_cert_path=server_cert_path,
            server_key_path=server_key_path,
            trusted_client_certs=trusted_client_certs,
            state_dir=state_dir,
        )
        if not 0.01 <= interval_s <= 3600.0:
            raise ValueError("interval_s must be within 0.01..3600 s")
        if history < 1:
            raise ValueError("history must be >= 1")
        self.grid = grid
        self._sim_clock = sim_clock or clock
        self._interval_s = interval_s
        self._history: OrderedDict[int, GridSnapshot] = OrderedDict()
        self._history_size = history
        self._publishing = asyncio.Lock()
        self.seq = 0
        #: Why the last step failed; None after a good step.
        self.last_error: str | None = None
        self.failed_steps = 0

    # -- lifecycle -----------------------------------------------------------

    async def _before_listen(self) -> None:
        await self.step_now()  # a first snapshot is there before any client connects

    def served(self, seq: int) -> GridSnapshot | None:
        """The snapshot published as ``seq``, if still in the history."""
        return self._history.get(seq)

    def latest(self) -> tuple[int, GridSnapshot] | None:
        """``(seq, snapshot)`` of the last published snapshot, None before the first."""
        if not self._history:
            return None
        seq = next(reversed(self._history))
        return seq, self._history[seq]

    # -- server construction -------------------------------------------------

    async def _build_address_space(self, server: Server) -> None:
        ns = await server.register_namespace(NAMESPACE_URI)
        rtu = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(OBJECT_NAME), ua.Int16(ns)), ua.QualifiedName(OBJECT_NAME, ns)
        )
        defaults: dict[ua.VariantType, object] = {
            ua.VariantType.String: self.grid.grid,
            ua.VariantType.UInt64: 0,
            ua.VariantType.Int64: 0,
        }
        variables = [
            *((name, vtype, name) for name, vtype in STATUS_VARIABLES),
            *((c, ua.VariantType.Double, f"{c} [{_unit(c)}]") for c in self.grid.columns),
        ]
        for name, vtype, description in variables:
            node = await rtu.add_variable(
                ua.NodeId(ua.String(f"{OBJECT_NAME}.{name}"), ua.Int16(ns)),
                ua.QualifiedName(name, ns),
                ua.Variant(defaults.get(vtype, 0.0), vtype),
                vtype,
            )
            await node.write_attribute(
                AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(description)))
            )
            self._nodes[name] = node
        seq = self._nodes[SNAPSHOT_SEQ].nodeid
        await server.write_attribute_value(seq, ua.DataValue(StatusCode=_NO_DATA_YET))

    # -- stepping ------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick = max(next_tick + self._interval_s, loop.time())
            await asyncio.sleep(next_tick - loop.time())
            await self.step_now()

    async def step_now(self) -> GridSnapshot | None:
        """Run one grid step now and publish it; returns it, or None if the step failed."""
        server = self._server
        if server is None:
            raise RuntimeError("RTU simulator not started")
        async with self._publishing:
            now_ms, sim_ms = self._clock.now_ms(), self._sim_clock.now_ms()
            try:
                powers = self.grid.read_sites()  # on the loop: the sites' simulators live here
                snapshot = await asyncio.to_thread(
                    self.grid.step, now_ms, sim_ms=sim_ms, site_powers=powers
                )
            except GridSimulationError as exc:
                await self._fail(server, str(exc), _SENSOR_FAILURE)
                return None
            except Exception as exc:
                _log.exception("grid RTU step failed unexpectedly")
                await self._fail(server, f"unexpected {type(exc).__name__}", _INTERNAL_ERROR)
                return None
            await self._publish(server, snapshot)
            return snapshot

    async def _fail(self, server: Server, reason: str, status: ua.StatusCode) -> None:
        if self.last_error is None:
            _log.error("grid RTU (%s): no snapshot: %s", self.grid.grid, reason)
        else:
            _log.debug("grid RTU (%s): no snapshot: %s", self.grid.grid, reason)
        self.last_error = reason
        self.failed_steps += 1
        await server.write_attribute_value(
            self._nodes[SNAPSHOT_SEQ].nodeid, ua.DataValue(StatusCode=status)
        )

    async def _publish(self, server: Server, snapshot: GridSnapshot) -> None:
        """Write one snapshot with the sequence lock: mark, columns, time, new seq last."""
        seq_node = self._nodes[SNAPSHOT_SEQ].nodeid
        source_ts = ua.DateTime.fromtimestamp(snapshot.ts_ms / 1000, tz=dt.UTC)

        def value(v: object, vtype: ua.VariantType) -> ua.DataValue:
            return ua.DataValue(ua.Variant(v, vtype), SourceTimestamp=source_ts)

        await server.write_attribute_value(
            seq_node,
            ua.DataValue(
                ua.Variant(self.seq, ua.VariantType.UInt64),
                StatusCode=_UPDATING,
                SourceTimestamp=source_ts,
            ),
        )
        for column, v in zip(self.grid.columns, snapshot.values, strict=True):
            await server.write_attribute_value(
                self._nodes[column].nodeid, value(float(v), ua.VariantType.Double)
            )
        await server.write_attribute_value(
            self._nodes[SNAPSHOT_TIME].nodeid, value(snapshot.ts_ms, ua.VariantType.Int64)
        )
        self.seq += 1
        await server.write_attribute_value(seq_node, value(self.seq, ua.VariantType.UInt64))
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_CurrentTime)),
            ua.DataValue(ua.Variant(source_ts, ua.VariantType.DateTime)),
        )
        self._history[self.seq] = snapshot
        while len(self._history) > self._history_size:
            self._history.popitem(last=False)
        self.last_error = None
