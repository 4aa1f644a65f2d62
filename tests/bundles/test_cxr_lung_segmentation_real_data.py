"""The bundle reads the real ieee8023 V7 lung masks through the datalist builder (skipped without ../shared/data).

Builds the patient-disjoint datalist the README's real-data command builds (``ieee8023_cxr_manifest`` with
``require=("lung_mask",)``), then runs the bundle's own training preprocessing (``loading`` of train.json,
parsed by ``monai.bundle.ConfigParser``) on a few cases and checks what must hold for real radiographs:
binary masks aligned with the image (same PNG pixels after MONAI's (X, Y) loading), two lungs covering a
plausible share of the film, and no patient in two splits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image
from scipy import ndimage

from bundle_runner import REPO
from medxai.data.datasets import build_datalist
from medxai.data.splits import check_patient_disjoint

BUNDLE = REPO / "bundles" / "cxr_lung_segmentation"


@pytest.fixture(scope="module")
def real_datalist(shared_data, tmp_path_factory):
    root = shared_data / "cxr_ieee8023_lungmasks"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"{root} has no manifest.csv")
    folder = tmp_path_factory.mktemp("ieee8023_lung")
    build_datalist(
        "ieee8023_cxr_manifest", root, output=folder / "datalist.json", relative=False, require=("lung_mask",)
    )
    return folder


def test_builder_gives_a_patient_disjoint_split_with_masks(real_datalist):
    content = json.loads((real_datalist / "datalist.json").read_text())
    splits = {name: content[name] for name in ("training", "validation", "test")}
    check_patient_disjoint(splits)
    assert all(len(records) >= 10 for records in splits.values())
    assert all("lung_mask" in record for records in splits.values() for record in records)


def test_bundle_preprocessing_on_real_masks(real_datalist):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["dataset_dir"] = str(real_datalist)
    parser["image_size"] = [128, 128]
    records = parser.get_parsed_content("train#records")[:4]
    loading = Compose(parser.get_parsed_content("loading"))
    for record in records:
        png = np.array(Image.open(record["label"])) > 0  # (rows, columns)
        item = loading(dict(record))
        image, label = item["image"], item["label"]
        assert tuple(image.shape) == tuple(label.shape) == (1, 128, 128)
        assert 0.0 <= float(image.min()) and float(image.max()) == pytest.approx(1.0)
        assert set(np.unique(label.numpy())) <= {0.0, 1.0}
        # the loaded mask, resized back to the PNG grid and transposed, is the PNG mask
        back = ndimage.zoom(label[0].numpy().T, np.array(png.shape) / 128, order=0) > 0.5
        assert (back == png).mean() > 0.97
        # two lungs covering 10-60 % of the film
        lungs = ndimage.label(png)[1]
        assert lungs >= 2 and 0.1 < png.mean() < 0.6
