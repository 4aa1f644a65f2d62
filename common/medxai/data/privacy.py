"""Stable pseudonyms for patient identifiers.

Patient identifiers never reach logs, file names or reports: wherever a case must be named, medxai uses
``pseudonym(patient_id)``, a salted SHA-256 digest that is stable across runs (so outputs of the same
patient can be matched) but cannot be read back.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["pseudonym"]

_SALT_ENV = "MEDXAI_PSEUDONYM_SALT"


def pseudonym(identifier: object, salt: str | None = None, length: int = 12) -> str:
    """Return a stable, non-reversible pseudonym ``"pt-<hex>"`` for ``identifier``.

    Parameters
    ----------
    identifier
        Any value whose ``str()`` identifies a patient (ID, name, accession number).
    salt
        Site secret mixed into the digest; defaults to the ``MEDXAI_PSEUDONYM_SALT`` environment
        variable (empty when unset). Set it per site so pseudonyms cannot be matched across sites.
    length
        Number of hexadecimal characters kept (4 to 64).
    """
    if not 4 <= length <= 64:
        raise ValueError(f"pseudonym length must be in [4, 64], got {length}.")
    salt = os.environ.get(_SALT_ENV, "") if salt is None else salt
    digest = hashlib.sha256(f"{salt}\x00{identifier}".encode("utf-8")).hexdigest()
    return f"pt-{digest[:length]}"
