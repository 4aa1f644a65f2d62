"""Synthetic 2D CT slices for the seed 004 bundle: windowing, body crop, masks on the slice, matched positions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medxai.data.synthetic.ct_slices import body_box, generate_ct_slice_dataset, window_to_uint8
from medxai.errors import InputError


def test_window_to_uint8_maps_the_lung_window_linearly():
    hu = np.array([-2000.0, -1350.0, -600.0, 150.0, 1000.0])
    # (-600 + 1350) / 1500 * 255 = 127.5 -> rint 128 (half to even gives 128)
    assert window_to_uint8(hu).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(InputError):
        window_to_uint8(hu, (0, 0))


def test_body_box_is_the_bounding_box_grown_by_the_margin():
    slice_ = np.full((10, 8), -1000.0)
    slice_[3:6, 2:7] = 40.0
    assert body_box(slice_, margin=1) == (slice(2, 7), slice(1, 8))
    assert body_box(slice_, margin=5) == (slice(0, 10), slice(0, 8))


def test_dataset_writes_landscape_slices_with_aligned_masks_and_patient_splits(tmp_path):
    path = generate_ct_slice_dataset(tmp_path, num_cases=6, shape=(64, 48, 8), slices_per_case=2, seed=1)
    content = json.loads(path.read_text())
    records = [r for split in ("training", "validation", "test") for r in content[split]]
    assert 6 <= len(records) <= 12 and {r["label"] for r in records} == {0, 1}  # 1 or 2 slices per patient
    by_patient: dict[str, set] = {}
    for split in ("training", "validation", "test"):
        for r in content[split]:
            by_patient.setdefault(r["patient_id"], set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())  # both slices of a patient in one split
    for r in records:
        image = np.array(Image.open(tmp_path / r["image"]))
        lesion = np.array(Image.open(tmp_path / r["lesion_mask"]))
        lung = np.array(Image.open(tmp_path / r["lung_mask"]))
        assert image.dtype == np.uint8 and image.shape == lesion.shape == lung.shape
        assert image.shape[1] > image.shape[0]  # rows Y (AP), columns X (LR): wider than tall
        assert int((lesion > 0).sum()) == r["lesion_pixels"]
        assert (r["lesion_pixels"] > 0) == (r["label"] == 1)  # COVID-19 slices show their lesions
        assert set(np.unique(lesion[lesion > 0])) <= {1, 2} and (lung[lesion > 0] > 0).all()
    # normal slices sit at the positions of their COVID-19 twins: the same range of slice indices
    positions = {label: sorted(r["slice"] for r in records if r["label"] == label) for label in (0, 1)}
    assert positions[0] and positions[1] and max(positions[0]) >= min(positions[1])
