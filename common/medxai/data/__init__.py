"""medxai.data."""
