"""Shared pytest fixtures.

Real public images live outside the repository in ``../shared/data`` (or ``$MEDXAI_SHARED_DATA``); tests
that need them use the ``shared_data`` fixture and are skipped cleanly when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Two cores here: keep intra-op threads modest so parallel test workers do not thrash.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data_root() -> Path:
    return Path(os.environ.get("MEDXAI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real public subsets; skips the test when it is not there."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} not present")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
