"""medxai.metrics."""
