"""NBD (Network Block Device) server over any `BlockDevice` hvsim can open."""
from storage.nbd.server import MAX_REQUEST, Export, NbdServer

__all__ = ["MAX_REQUEST", "Export", "NbdServer"]
