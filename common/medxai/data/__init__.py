"""medxai.data."""

from medxai.data.fault_tolerant import BadCase, FaultTolerantDataLoader, FaultTolerantDataset  # noqa: F401
