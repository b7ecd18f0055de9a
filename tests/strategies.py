"""A distributed strategy for hook tests: the place a launcher gave this process, fixed."""
from unet3d_core.types import DistributedStrategy


class FixedStrategy(DistributedStrategy):
    """``size`` workers, this one ``rank``; ``local_size`` of them on this host, this one ``local_rank``."""

    def __init__(self, size: int = 1, *, rank: int = 0, local_rank: int = 0, local_size: int = 1):
        self._place = (rank, size, local_rank, local_size)

    @property
    def rank(self) -> int:
        return self._place[0]

    @property
    def size(self) -> int:
        return self._place[1]

    @property
    def local_rank(self) -> int:
        return self._place[2]

    @property
    def local_size(self) -> int:
        return self._place[3]
