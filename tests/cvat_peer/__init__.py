"""A faithful CVAT 2.73 test peer for the real cvat-sdk client (see :mod:`tests.cvat_peer.server`)."""

from tests.cvat_peer.server import CvatPeer

__all__ = ["CvatPeer"]
