"""The Modbus TCP transport the edge's Modbus adapters share (SunSpec, the load profile).

One connection per device, opened on demand and dropped after a timeout or a link
failure (the next call reopens it); every request bounded by ``timeout_s``; every fault a
:class:`DeviceError` naming the device, never a hang and never a pymodbus exception.
A device's Modbus exception response is :class:`ModbusExceptionResponse` (its ``code``
tells "no such register" from "value refused").
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from edge_node.devices.base import DeviceError

#: One Modbus request on a connected client.
Request = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


class ModbusExceptionResponse(DeviceError):
    """The device answered with a Modbus exception; ``code`` is its exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ModbusLink:
    """The connection to one Modbus TCP unit (see the module docstring). ``opened``: the
    adapter's ``connect()`` succeeded; until then every call is refused."""

    def __init__(self, host: str, port: int, unit_id: int, timeout_s: float) -> None:
        self.host, self.port, self.unit_id, self.timeout_s = host, port, unit_id, timeout_s
        self.opened = False
        self._client: AsyncModbusTcpClient | None = None

    @property
    def where(self) -> str:
        return f"device {self.host}:{self.port} unit {self.unit_id}"

    def error(self, what: str) -> DeviceError:
        return DeviceError(f"{self.where}: {what}")

    def drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def open(self) -> AsyncModbusTcpClient:
        self.drop()
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if not ok:
            client.close()
            raise self.error("cannot connect (refused, unreachable or timed out)")
        self._client = client
        return client

    async def client(self) -> AsyncModbusTcpClient:
        if not self.opened:
            raise self.error("not connected: call connect() first")
        if self._client is not None and self._client.connected:
            return self._client
        return await self.open()

    async def call(self, what: str, request: Request) -> ModbusPDU:
        """Send ``request``; ``what`` names it in errors (e.g. "reading 8 registers at 0")."""
        client = await self.client()
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await request(client)
        except (TimeoutError, ModbusIOException) as exc:
            self.drop()
            raise self.error(f"no response within {self.timeout_s} s {what}") from exc
        except (ModbusException, OSError) as exc:
            self.drop()
            raise self.error(f"link failed {what} ({type(exc).__name__})") from exc
        if response.isError():
            code = response.exception_code
            raise ModbusExceptionResponse(f"{self.where}: Modbus exception {code} {what}", code)
        return response


class ModbusAdapter:
    """The transport half of a Modbus adapter: the checked address of its unit, its
    :class:`ModbusLink` and the helpers its protocol code calls."""

    def __init__(
        self, asset_id: str, host: str, port: int, unit_id: int, timeout_s: float = 2.0
    ) -> None:
        if not asset_id:
            raise ValueError("asset_id must be non-empty")
        if not host:
            raise ValueError("host must be non-empty")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be in 0..255, got {unit_id}")
        if not (math.isfinite(timeout_s) and 0 < timeout_s <= 60):
            raise ValueError(f"timeout_s must be in (0, 60] s, got {timeout_s}")
        self._asset_id, self._unit_id = asset_id, unit_id
        self._link = ModbusLink(host, port, unit_id, timeout_s)

    def _error(self, what: str) -> DeviceError:
        return self._link.error(what)

    @property
    def _opened(self) -> bool:
        return self._link.opened

    @_opened.setter
    def _opened(self, value: bool) -> None:
        self._link.opened = value

    def _drop(self) -> None:
        self._link.drop()

    async def _open(self) -> AsyncModbusTcpClient:
        return await self._link.open()

    async def _call(self, what: str, request: Request) -> ModbusPDU:
        return await self._link.call(what, request)
