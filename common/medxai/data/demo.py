"""Deterministic synthetic demo datasets, generated on first use into a cache folder.

Every bundle runs out of the box on one of these sets: a bundle config names ``dataset_dir`` and calls
:func:`resolve_datalist`. An empty ``dataset_dir`` means "the demo set": it is generated once into
``$MEDXAI_CACHE`` (default ``~/.cache/medxai``) and reused. A ``dataset_dir`` the user names must exist;
a missing one is a :class:`~medxai.errors.DatasetError` naming the path, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medxai.errors import DatasetError

__all__ = ["DEMO_SETS", "demo_cache_dir", "ensure_demo_dataset", "resolve_datalist", "summarize_datalist"]

#: demo set name -> (generator "module:function", default keyword arguments)
DEMO_SETS: dict[str, tuple[str, dict[str, Any]]] = {
    "ct": ("medxai.data.synthetic.ct:generate_ct_dataset", {"num_cases": 60, "seed": 0}),
    "cxr": ("medxai.data.synthetic.cxr:generate_cxr_dataset", {"num_cases": 80, "seed": 0}),
    "brain": ("medxai.data.synthetic.brain:generate_brain_dataset", {"num_subjects": 12, "seed": 0}),
    "ct_slices": ("medxai.data.synthetic.ct_slices:generate_ct_slice_dataset", {"num_cases": 120, "seed": 0}),
}
_FORMAT_VERSION = 1


def demo_cache_dir() -> Path:
    """The cache root: ``$MEDXAI_CACHE`` or ``~/.cache/medxai``."""
    return Path(os.environ.get("MEDXAI_CACHE", Path.home() / ".cache" / "medxai")).expanduser()


def _generator(name: str):
    if name not in DEMO_SETS:
        raise DatasetError(f"unknown demo set '{name}'; available: {', '.join(sorted(DEMO_SETS))}.")
    target, defaults = DEMO_SETS[name]
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function), defaults


def ensure_demo_dataset(name: str, cache_dir: str | Path | None = None, **overrides: Any) -> Path:
    """Return the datalist path of demo set ``name``, generating it first if it is not cached.

    The folder name includes a digest of the generator arguments and of the source files of the generator's
    package (every ``*.py`` beside the generator's module, since generators share phantoms: ``ct_slices``
    cuts the ``ct`` phantoms), so different overrides (e.g. ``num_cases=8`` in tests) never collide and an
    edited generator or phantom never serves a stale set. Generation writes to a temporary sibling folder that is
    renamed into place, so an interrupted run never leaves a half-written set behind.
    """
    generate, defaults = _generator(name)
    kwargs = {**defaults, **overrides}
    # The generators' sources are part of the key: editing any phantom invalidates cached copies.
    package = Path(inspect.getfile(generate)).parent
    source = b"".join(path.name.encode() + path.read_bytes() for path in sorted(package.glob("*.py")))
    key = json.dumps([_FORMAT_VERSION, kwargs], sort_keys=True, default=str).encode() + source
    digest = hashlib.sha256(key).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else demo_cache_dir()
    final = root / f"demo_{name}_{digest[:10]}"
    datalist = final / "datalist.json"
    if datalist.is_file():
        return datalist
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".demo_{name}_", dir=root))
    try:
        generate(staging, **kwargs)
        (staging / "demo_args.json").write_text(json.dumps(kwargs, sort_keys=True, default=str) + "\n")
        try:
            os.replace(staging, final)
        except OSError:  # another process finished first: keep its copy
            if not datalist.is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return datalist


def resolve_datalist(
    dataset_dir: str | Path | None, demo: str, datalist_name: str = "datalist.json", **demo_overrides: Any
) -> str:
    """The datalist a bundle should read.

    Parameters
    ----------
    dataset_dir
        Empty (``""`` or ``None``): use demo set ``demo`` (generated on first use). Otherwise a folder
        that must exist and contain ``datalist_name`` (or a path to a datalist JSON file itself).
    demo
        Name of the demo set in :data:`DEMO_SETS`.
    demo_overrides
        Generator arguments for the demo set (e.g. ``num_cases``), ignored for a user dataset.
    """
    if dataset_dir is None or str(dataset_dir).strip() == "":
        return str(ensure_demo_dataset(demo, **demo_overrides))
    path = Path(dataset_dir).expanduser()
    if path.is_file():
        return str(path)
    if not path.exists():
        raise DatasetError(f"dataset_dir '{path}' does not exist (leave it empty to use the synthetic demo set).")
    candidate = path / datalist_name
    if not candidate.is_file():
        raise DatasetError(
            f"dataset_dir '{path}' has no '{datalist_name}'; build one with `medxai datalist ...` "
            "(see docs/data.md)."
        )
    return str(candidate)


def summarize_datalist(datalist: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Counts per split and per class of a datalist (a JSON path or its loaded content).

    For a path, the size in MB of the folder holding it is added as ``size_mb``.
    """
    summary: dict[str, Any] = {"splits": {}}
    if isinstance(datalist, Mapping):
        content = datalist
    else:
        path = Path(datalist)
        content = json.loads(path.read_text())
        summary["datalist"] = str(path)
        summary["size_mb"] = round(sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file()) / 1e6, 1)
    for split, records in content.items():
        if not isinstance(records, list):
            continue
        classes: dict[str, int] = {}
        for record in records:
            key = str(record.get("class_name", record.get("thickness", record.get("label", "?"))))
            classes[key] = classes.get(key, 0) + 1
        summary["splits"][split] = {"cases": len(records), "by_class": dict(sorted(classes.items()))}
    return summary
