from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from medxai.engines.case_metrics import LocalizationMetricsHandler, SliceLevelReportHandler
from medxai.metrics.classification import classification_report


def _case(name, map_, mask, scores=None, slice_labels=None):
    item = {
        "image": MetaTensor(torch.zeros(1, *mask.shape), meta={"filename_or_obj": f"/data/{name}.nii.gz"}),
        "cam": torch.as_tensor(map_, dtype=torch.float32)[None],
        "lesion_mask": torch.as_tensor(mask)[None],
    }
    if scores is not None:
        item["slice_scores"] = torch.as_tensor(scores, dtype=torch.float32)
        item["slice_labels"] = slice_labels
    return item


def _run(handler, outputs):
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.run([outputs], max_epochs=1)
    return engine


def test_localization_handler_hand_values(tmp_path):
    mask = np.zeros((4, 4, 2), dtype=np.uint8)
    mask[:2, :2, 0] = 1  # 4 of 32 voxels
    inside = mask.astype(float) * 3.0  # all energy inside, maximum inside
    half = np.zeros_like(inside)
    half[0, 0, 0], half[3, 3, 1] = 1.0, 1.0  # two equal maxima, one outside -> miss; energy 0.5
    empty = np.zeros_like(mask)
    outputs = [_case("ct_0001", inside, mask), _case("ct_0002", half, mask), _case("ct_0003", inside, empty)]
    engine = _run(LocalizationMetricsHandler(tmp_path), outputs)
    content = json.loads((tmp_path / "localization.json").read_text())
    per_case = {r["case"]: r for r in content["per_case"]}
    assert set(per_case) == {"ct_0001", "ct_0002"}  # the empty mask is skipped
    assert per_case["ct_0001"]["pointing_game"] == 1.0 and per_case["ct_0001"]["energy_share"] == 1.0
    assert per_case["ct_0002"]["pointing_game"] == 0.0 and per_case["ct_0002"]["energy_share"] == 0.5
    assert per_case["ct_0001"]["chance_energy_share"] == pytest.approx(4 / 32)
    assert engine.state.metrics["energy_share"] == pytest.approx(0.75)
    assert engine.state.metrics["pointing_game"] == pytest.approx(0.5)


def test_localization_handler_resizes_low_resolution_maps(tmp_path):
    mask = np.zeros((8, 8, 2), dtype=np.uint8)
    mask[:4, :4, :] = 1
    coarse = np.zeros((2, 2, 2))
    coarse[0, 0, :] = 1.0  # the top-left quarter at feature resolution
    _run(LocalizationMetricsHandler(tmp_path), [_case("ct_0004", coarse, mask)])
    record = json.loads((tmp_path / "localization.json").read_text())["per_case"][0]
    assert record["pointing_game"] == 1.0 and record["energy_share"] > 0.7


def test_slice_level_report_equals_classification_report(tmp_path):
    mask = np.zeros((2, 2, 3), dtype=np.uint8)
    s1 = np.array([[0.0, 2.0], [0.0, -1.0], [0.0, 0.5]])
    s2 = np.array([[0.0, -2.0], [0.0, 1.0], [0.0, -0.5]])
    outputs = [
        _case("a", mask, mask, s1, [1, 0, 1]),
        _case("b", mask, mask, s2, [0, 1, 0]),
        _case("c", mask, mask, s2, [0, 1]),  # wrong length: skipped
    ]
    handler = SliceLevelReportHandler(tmp_path)
    engine = _run(handler, outputs)
    report = json.loads((tmp_path / "slice_metrics.json").read_text())
    scores = 1 / (1 + np.exp(-np.concatenate([s1[:, 1], s2[:, 1]])))
    expected = classification_report(np.array([1, 0, 1, 0, 1, 0]), scores)
    assert report["auc"] == pytest.approx(expected["auc"]) == 1.0
    assert report["cases"] == 2 and report["skipped_cases"] == 1
    assert engine.state.metrics["slice_accuracy"] == pytest.approx(expected["accuracy"])


def test_masks_and_slice_labels_are_read_from_the_batch_like_monai_evaluators(tmp_path):
    mask = np.zeros((4, 4, 2), dtype=np.uint8)
    mask[:2, :2, 0] = 1
    case = _case("ct_0005", mask.astype(float), mask, np.zeros((2, 2)), [0, 1])
    batch_only = {"lesion_mask", "slice_labels"}
    engine = Engine(lambda e, batch: [{k: v for k, v in item.items() if k not in batch_only} for item in batch])
    LocalizationMetricsHandler(tmp_path).attach(engine)
    SliceLevelReportHandler(tmp_path).attach(engine)
    engine.run([[case]], max_epochs=1)
    assert engine.state.metrics["energy_share"] == 1.0
    assert json.loads((tmp_path / "slice_metrics.json").read_text())["cases"] == 1
