#!/usr/bin/env python
"""Package a bundle as a self-contained model-zoo style archive: ``dist/<bundle>_v<version>.zip``.

The archive holds one folder ``<bundle>/`` with the bundle's configs, docs and LICENSE, its trained
``models/model.pt`` and a vendored copy of ``medxai`` (``<bundle>/medxai/``), so the unzipped bundle runs where
only MONAI and the third-party packages of its ``configs/metadata.json`` are installed. The archive's
``docs/packaged_bundle.md`` says how to run it (see :mod:`medxai.packaging`).

Usage::

    python scripts/package_bundle.py cxr_lung_segmentation              # bundles/<name> or a folder path
    python scripts/package_bundle.py bundles/cxr_lung_segmentation --output_dir dist --version 0.1.0
    python scripts/package_bundle.py cxr_lung_segmentation --allow_missing_weights   # untrained: no model.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medxai.packaging import ArchiveError, package_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_bundle(name_or_path: str) -> Path:
    """A bundle folder given as a path, or as a name under ``bundles/`` of this repository."""
    path = Path(name_or_path)
    if (path / "configs").is_dir():
        return path
    named = REPO_ROOT / "bundles" / name_or_path
    if (named / "configs").is_dir():
        return named
    raise ArchiveError(f"{name_or_path!r} is neither a bundle folder nor a bundle under {REPO_ROOT / 'bundles'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle name (under bundles/) or bundle folder")
    parser.add_argument("--output_dir", default="dist", help="folder for the archive (default: dist)")
    parser.add_argument(
        "--version", default=None, help="version to release, a key of the metadata changelog (default: its version)"
    )
    parser.add_argument(
        "--allow_missing_weights",
        action="store_true",
        help="package without models/model.pt (by default a missing checkpoint is an error)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        archive = package_bundle(
            resolve_bundle(args.bundle),
            output_dir=args.output_dir,
            version=args.version,
            allow_missing_weights=args.allow_missing_weights,
        )
    except ArchiveError as error:
        print(f"package_bundle: {error}", file=sys.stderr)
        return 1
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
