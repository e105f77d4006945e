"""Connectors: the kinds of a route's sources and sinks behind one interface (base.py), the
built-in ones (builtin.py) and the field connectors (modbus, postgres). Importing the package
registers them all; third-party kinds come from the ``iotwasm.connectors`` entry points."""

from . import builtin, coap, modbus, opcua, postgres  # noqa: F401 - registering the built-in kinds
from .base import (
    ENTRY_POINT_GROUP,
    BuildContext,
    Connector,
    Registry,
    cancel_and_wait,
    registry,
    require,
    status_of,
)

__all__ = ["ENTRY_POINT_GROUP", "BuildContext", "Connector", "Registry", "cancel_and_wait", "registry",
           "require", "status_of"]
