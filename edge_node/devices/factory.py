"""Build a device adapter from its configuration (the edge's only adapter constructor)."""

from __future__ import annotations

from edge_node.config import DeviceConfig
from edge_node.devices.base import AssetKind, DeviceAdapter
from edge_node.devices.grid_rtu import GridRtu
from edge_node.devices.modbus_load import ModbusFlexibleLoad
from edge_node.devices.opcua import OpcUaClientSecurity, OpcUaEvCharger
from edge_node.devices.sunspec import SunSpecBattery, SunSpecPvInverter


def build_adapter(device: DeviceConfig) -> DeviceAdapter:
    if device.protocol == "sunspec":
        host, _, port = device.address.rpartition(":")
        if device.kind is AssetKind.PV_INVERTER:
            return SunSpecPvInverter(device.asset_id, host, int(port), device.unit_id)
        if device.kind is AssetKind.BATTERY:
            return SunSpecBattery(device.asset_id, host, int(port), device.unit_id)
        raise ValueError(f"device {device.asset_id}: no SunSpec adapter for {device.kind.value}")
    if device.protocol == "modbus_load":
        host, _, port = device.address.rpartition(":")
        return ModbusFlexibleLoad(device.asset_id, host, int(port), device.unit_id)
    security = None
    if device.opcua_client_cert and device.opcua_client_key and device.opcua_server_cert:
        security = OpcUaClientSecurity(
            device.opcua_client_cert,
            device.opcua_client_key,
            device.opcua_server_cert,
            application_uri=device.opcua_application_uri,
        )
    if device.kind is AssetKind.EV_CHARGER:
        return OpcUaEvCharger(device.asset_id, device.address, security=security)
    if device.kind is AssetKind.GRID_RTU:
        return GridRtu(device.asset_id, device.address, device.grid, security=security)
    raise ValueError(f"device {device.asset_id}: no OPC UA adapter for {device.kind.value}")
