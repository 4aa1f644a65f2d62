"""medxai.data.synthetic."""
