"""CVAT through cvat-sdk: the client and one module per concern (tasks, push, pull, qa), composed
by :class:`CvatPlatform`. Shape conversion and the machine-made rule live in ``formats.cvat``."""

from labelloop.connectors.cvat.client import CvatClient
from labelloop.connectors.cvat.platform import CvatPlatform
from labelloop.connectors.formats.cvat import MACHINE_SOURCES

__all__ = ["MACHINE_SOURCES", "CvatClient", "CvatPlatform"]
