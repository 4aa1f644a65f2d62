"""What the ventricle bundle writes per volume: label map, volumes, sentence, overlay, expected Dice per slice."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medxai.errors import InputError, MedXAIError
from medxai.explain.embedding import extract_features
from medxai.explain.latent_space import fit_latent_landscape, save_latent_landscape
from medxai.networks import SubpixelUNet
from medxai.transforms.ventricle_outputs import (
    LatentExpectedDiced,
    WriteVentricleSegmentationd,
    describe_ventricles,
    write_ventricle_predictions,
)

AFFINE = np.diag([2.0, 2.0, 5.0, 1.0])  # voxel 20 mm^3 = 0.02 ml


def _case(tmp_path, labels: np.ndarray, probs: np.ndarray | None = None):
    meta = {"filename_or_obj": str(tmp_path / "sub-01_thick.nii.gz")}
    data = {
        "original_image": MetaTensor(torch.rand(1, *labels.shape), affine=torch.as_tensor(AFFINE), meta=dict(meta)),
        "pred": MetaTensor(torch.as_tensor(labels)[None].float(), affine=torch.as_tensor(AFFINE), meta=dict(meta)),
    }
    if probs is not None:
        data["probs"] = torch.as_tensor(probs)
    return data


def test_writer_volumes_slices_confidence_and_sentence_by_hand(tmp_path) -> None:
    labels = np.zeros((8, 8, 6), dtype=np.int64)
    labels[2:4, 2:4, 1:3] = 1  # 8 voxels lateral -> 0.16 ml
    labels[5, 5, 3] = 2  # 1 voxel third -> 0.02 ml
    probs = np.full((4, 8, 8, 6), 0.1, dtype=np.float32)
    probs[0] = 0.7
    probs[0][labels > 0] = 0.1
    probs[1][labels == 1] = 0.9
    probs[2][labels == 2] = 0.6
    writer = WriteVentricleSegmentationd(tmp_path / "out", prob_key="probs")
    out = writer(_case(tmp_path, labels, probs))
    summary = out["summary"]
    assert summary["case"] == "sub-01_thick"
    assert summary["volume_ml"] == pytest.approx({"lateral": 0.16, "third": 0.02, "fourth": 0.0})
    assert summary["slice_range"] == [1, 3] and summary["largest_slice"] == 1
    assert summary["mean_confidence"] == pytest.approx((8 * 0.9 + 0.6) / 9)
    assert summary["sentence"] == (
        "Ventricles found on axial slices 1-3 of 6: lateral 0.2 ml, third 0.0 ml, fourth 0.0 ml; mean confidence 0.87."
    )
    folder = tmp_path / "out" / "sub-01_thick"
    saved = nib.load(str(folder / "sub-01_thick_ventricles.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), labels)
    np.testing.assert_allclose(saved.affine, AFFINE)
    assert json.loads((folder / "sub-01_thick_summary.json").read_text())["volume_ml"]["lateral"] == pytest.approx(0.16)
    assert (folder / "sub-01_thick_overlay.png").stat().st_size > 1000
    csv_path = write_ventricle_predictions(tmp_path / "out")
    assert csv_path.read_text().splitlines()[1].startswith("sub-01_thick,0.160,0.020,0.000,1,3,0.8667,,")


def test_writer_expected_dice_only_on_slices_with_ventricles(tmp_path) -> None:
    labels = np.zeros((8, 8, 6), dtype=np.int64)
    labels[2:4, 2:4, 2:4] = 1
    data = _case(tmp_path, labels)
    data["expected_dice"] = np.array([np.nan, 0.3, 0.8, 0.6, np.nan, np.nan])  # slice 1 has no final label
    summary = WriteVentricleSegmentationd(tmp_path / "out", expected_dice_key="expected_dice")(data)["summary"]
    assert summary["expected_dice"]["per_slice"] == {2: 0.8, 3: 0.6}
    assert summary["expected_dice"]["mean"] == pytest.approx(0.7) and summary["expected_dice"]["min_slice"] == 3
    assert summary["sentence"].endswith("Expected Dice from the latent-space landscape: 0.70 on average, lowest 0.60 on slice 3.")


def test_writer_errors_name_the_case(tmp_path) -> None:
    labels = np.zeros((4, 4, 3), dtype=np.int64)
    labels[0, 0, 0] = 7
    with pytest.raises(MedXAIError, match="case 'sub-01_thick'.*outside the class range"):
        WriteVentricleSegmentationd(tmp_path)(_case(tmp_path, labels))
    assert describe_ventricles({}, None, 12, None) == "No ventricles were found on any of the 12 axial slices."


def test_expected_dice_is_the_landscape_on_the_bottleneck_of_slices_with_predicted_ventricles(tmp_path) -> None:
    torch.manual_seed(0)
    network = SubpixelUNet("small_resnet", in_channels=1, out_channels=4, decoder_channels=(8, 8, 8)).eval()
    image = torch.randn(1, 16, 16, 5)
    pred = torch.zeros(4, 16, 16, 5)
    pred[0] = 1.0
    pred[1, 4:8, 4:8, 1] = 5.0  # ventricles predicted on slices 1 and 3 only
    pred[3, 2:3, 2:3, 3] = 5.0
    rng = np.random.default_rng(0)
    features = extract_features(network, torch.randn(30, 1, 16, 16), network.latent_layer, pool="avg")
    landscape = fit_latent_landscape(features, rng.uniform(0.2, 0.9, 30), grid_size=20)
    path = save_latent_landscape(landscape, tmp_path / "landscape.npz")
    out = LatentExpectedDiced(network, network.latent_layer, path)({"image": image, "pred": pred})
    expected = out["expected_dice"]
    assert np.isnan(expected[[0, 2, 4]]).all()
    slices = torch.movedim(image, 3, 0)[[1, 3]]
    want = landscape.expected_dice(extract_features(network, slices, network.latent_layer, pool="avg"))
    np.testing.assert_allclose(expected[[1, 3]], want, atol=1e-6)
    with pytest.raises(InputError, match="run evaluate.json first"):
        LatentExpectedDiced(network, network.latent_layer, tmp_path / "missing.npz")
