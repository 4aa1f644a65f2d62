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

# Under pytest-xdist every worker gets one intra-op thread: two workers on two cores, no oversubscription
# (two threads per worker made a ResNet forward about 8x slower here). Otherwise respect OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("OMP_NUM_THREADS") == "1":
    torch.set_num_threads(1)


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
