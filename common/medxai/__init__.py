"""medxai: shared code behind the medxai-bundles MONAI Bundles.

Explainable COVID-19 and lung/brain imaging: synthetic phantoms and datalists (:mod:`medxai.data`),
transforms, networks, losses, explainers and metrics that the bundles under ``bundles/`` reference from
their JSON configs as ``medxai.<module>.<name>``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from medxai.errors import DatasetError, InputError, MedXAIError

__all__ = ["__version__", "MedXAIError", "InputError", "DatasetError"]
