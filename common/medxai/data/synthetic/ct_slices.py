"""Synthetic 2D chest CT slices (8-bit PNG), the demo set of the slice classifier of seed 004.

Alshazly et al. 2021 (seed 004) classify single axial CT slices stored as images of many sizes (the
COVID19-CT and SARS-CoV-2 CT sets, sec. 5.1). :func:`generate_ct_slice_dataset` makes such a set from the
synthetic CT volumes of :mod:`medxai.data.synthetic.ct`: per patient, ``slices_per_case`` axial slices are
windowed (lung window, default -1350 to 150 HU) to 8-bit, cropped to the body's bounding box plus a margin
(so every slice keeps its own, mostly landscape, aspect ratio, as the real sets do) and written as PNG with
the lesion and lung masks on the same grid.

- COVID-19 patients (bilateral peripheral ground-glass): the slices with the largest lesion area.
- Normal patients: the same slice positions as their COVID-19 twin (the same synthetic patient generated
  with lesions), so the slice's position in the chest carries no class information.

PNG rows are the volume's Y axis (anterior-posterior) and columns its X axis (left-right), so a slice looks
as a radiologist sees it and, loaded by MONAI's PIL reader, becomes ``(C, X, Y)`` = ``(C, width, height)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medxai.data.splits import patient_split
from medxai.data.synthetic.ct import _balanced, _check_shape, generate_ct_case
from medxai.data.synthetic.io import save_png, write_datalist
from medxai.errors import InputError

__all__ = ["generate_ct_slice_dataset", "window_to_uint8", "body_box"]

SLICE_CLASS_NAMES: tuple[str, str] = ("normal", "covid19")


def window_to_uint8(hu: np.ndarray, window: Sequence[float] = (-1350.0, 150.0)) -> np.ndarray:
    """Map Hounsfield units linearly from ``window`` to 0..255 (clipped, rounded): 8-bit PNG grey levels."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise InputError(f"window must be (low, high) with high > low, got {window!r}.")
    return np.clip(np.rint((np.asarray(hu, dtype=np.float64) - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def body_box(hu_slice: np.ndarray, margin: int = 3, threshold_hu: float = -500.0) -> tuple[slice, slice]:
    """Bounding box (X, Y slices) of the pixels above ``threshold_hu`` in an (X, Y) slice, grown by ``margin``."""
    body = np.asarray(hu_slice) > threshold_hu
    if not body.any():
        return slice(0, body.shape[0]), slice(0, body.shape[1])
    xs, ys = np.nonzero(body.any(axis=1))[0], np.nonzero(body.any(axis=0))[0]
    return (
        slice(max(0, int(xs[0]) - margin), min(body.shape[0], int(xs[-1]) + 1 + margin)),
        slice(max(0, int(ys[0]) - margin), min(body.shape[1], int(ys[-1]) + 1 + margin)),
    )


def _pick_slices(case: Any, count: int, rng: np.random.Generator) -> list[int]:
    depth = case.image.shape[2]
    if case.lesion_slices is not None:
        area = case.lesion_mask.reshape(-1, depth).astype(bool).sum(axis=0)
        order = np.argsort(-area, kind="stable")
        return sorted(int(z) for z in order[:count] if area[z] > 0) or [int(order[0])]
    middle = np.arange(depth // 4, max(depth // 4 + 1, (3 * depth) // 4))
    return sorted(int(z) for z in rng.choice(middle, size=min(count, middle.size), replace=False))


def generate_ct_slice_dataset(
    output_dir: str | Path,
    num_cases: int = 120,
    seed: int = 0,
    shape: Sequence[int] = (128, 96, 16),
    slices_per_case: int = 2,
    centres: Sequence[str] = ("A", "B"),
    severities: Mapping[str, float] | None = None,
    window: Sequence[float] = (-1350.0, 150.0),
    margin: int = 3,
    fractions: Mapping[str, float] | None = None,
) -> Path:
    """Write synthetic 2D CT slices (normal / COVID-19) and their datalist; return the datalist path.

    Layout (paths relative to ``output_dir``)::

        images/ctslice_PPPP_ZZ.png          uint8, lung window, rows Y, columns X
        labels/ctslice_PPPP_ZZ_lesion.png   uint8, 0 background, 1 ground-glass, 2 consolidation
        labels/ctslice_PPPP_ZZ_lung.png     uint8, 0 background, 1 right lung, 2 left lung
        datalist.json                       "training" / "validation" / "test" (patient-level, stratified)

    Each record: ``image``, ``lesion_mask``, ``lung_mask``, ``label`` (0 normal, 1 COVID-19), ``class_name``,
    ``patient_id``, ``slice``, ``centre``, ``severity``, ``lesion_pixels``.

    Parameters
    ----------
    num_cases
        Synthetic patients, classes balanced.
    shape
        Volume grid (X, Y, Z) each patient is generated on (X > Y gives landscape slices).
    slices_per_case
        Slices kept per patient, all in the same split (fewer where the lesions span fewer slices).
    severities
        COVID-19 severity mix (default moderate and severe, half each: lesions a small CNN can see).
    """
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 2:
        raise InputError(f"num_cases must be an integer >= 2, got {num_cases!r}.")
    if isinstance(slices_per_case, bool) or not isinstance(slices_per_case, (int, np.integer)) or slices_per_case < 1:
        raise InputError(f"slices_per_case must be a positive integer, got {slices_per_case!r}.")
    shape = _check_shape(shape)
    mix = dict({"moderate": 0.5, "severe": 0.5} if severities is None else severities)
    out = Path(output_dir)
    rng = np.random.default_rng([int(seed), 17])
    labels = _balanced(rng, int(num_cases), [0, 1])
    centre_of = _balanced(rng, int(num_cases), list(centres))
    names, weights = list(mix), np.array(list(mix.values()), dtype=float)
    case_seeds = np.random.SeedSequence([int(seed), 19]).generate_state(int(num_cases), dtype=np.uint32)
    records: list[dict[str, Any]] = []
    for i in range(int(num_cases)):
        class_name = SLICE_CLASS_NAMES[labels[i]]
        severity = "none" if labels[i] == 0 else str(rng.choice(names, p=weights / weights.sum()))
        case = generate_ct_case(int(case_seeds[i]), class_name, severity, centre_of[i], shape)
        # slice positions of a normal patient come from its COVID-19 twin (same anatomy, same seed), so the
        # position of a slice in the chest does not give its class away
        twin_severity = severity if labels[i] == 1 else str(rng.choice(names, p=weights / weights.sum()))
        twin = case if labels[i] == 1 else generate_ct_case(
            int(case_seeds[i]), "covid19", twin_severity, centre_of[i], shape, add_noise=False
        )
        for z in _pick_slices(twin, int(slices_per_case), rng):
            box = body_box(case.image[:, :, z], margin)
            stem = f"ctslice_{i:04d}_{z:02d}"
            lesion = case.lesion_mask[box[0], box[1], z]
            # PNG rows are Y and columns X: transpose the (X, Y) slice
            save_png(window_to_uint8(case.image[box[0], box[1], z], window).T, out / "images" / f"{stem}.png")
            save_png(lesion.T.astype(np.uint8), out / "labels" / f"{stem}_lesion.png")
            save_png(case.lung_mask[box[0], box[1], z].T.astype(np.uint8), out / "labels" / f"{stem}_lung.png")
            records.append(
                {
                    "image": f"images/{stem}.png",
                    "lesion_mask": f"labels/{stem}_lesion.png",
                    "lung_mask": f"labels/{stem}_lung.png",
                    "label": int(labels[i]),
                    "class_name": class_name,
                    "patient_id": f"synthetic-ctslice-{i:04d}",
                    "slice": int(z),
                    "centre": case.centre,
                    "severity": case.severity,
                    "lesion_pixels": int((lesion > 0).sum()),
                }
            )
    splits = patient_split(records, fractions, label_key="label", patient_key="patient_id", seed=int(seed))
    metadata = {
        "generator": "medxai.data.synthetic.ct_slices.generate_ct_slice_dataset",
        "seed": int(seed),
        "num_cases": int(num_cases),
        "shape": list(shape),
        "slices_per_case": int(slices_per_case),
        "class_names": list(SLICE_CLASS_NAMES),
        "window_hu": [float(window[0]), float(window[1])],
        "orientation": "PNG rows = Y (anterior-posterior), columns = X (left-right); loaded as (C, X, Y)",
    }
    return write_datalist(splits, out / "datalist.json", metadata)
