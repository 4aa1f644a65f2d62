"""medxai.explain."""
