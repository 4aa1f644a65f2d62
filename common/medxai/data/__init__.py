"""medxai.data."""

from medxai.data.fault_tolerant import BadCase, FaultTolerantDataLoader, FaultTolerantDataset  # noqa: F401
from medxai.data.cache import UntrackedCacheDataset, meta_tracking  # noqa: F401
