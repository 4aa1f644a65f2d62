"""Error types raised by medxai.

Every error names the offending case (file, datalist entry, key) and the problem, so a user can fix the
input without reading a traceback. They subclass :class:`ValueError` so existing ``except ValueError``
code keeps working.
"""

from __future__ import annotations

__all__ = ["MedXAIError", "InputError", "DatasetError"]


class MedXAIError(ValueError):
    """Base class of every error medxai raises on purpose."""


class InputError(MedXAIError):
    """An image, volume, tensor or argument that cannot be used (wrong shape, NaN, empty, out of range)."""


class DatasetError(MedXAIError):
    """A dataset folder, manifest or datalist that is missing, malformed or inconsistent."""
