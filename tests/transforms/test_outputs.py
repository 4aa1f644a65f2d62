"""Inference outputs of the CT MIL bundle: split the details, resize and invert the maps into the input's
geometry, write boxes / summary / overlay per case, and the predictions table."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, SaveImaged, ScaleIntensityRanged
from PIL import Image
from scipy import ndimage

from medxai.data.privacy import pseudonym
from medxai.data.synthetic.ct import generate_ct_case
from medxai.data.synthetic.io import save_nifti
from medxai.engines.inferers import DetailsInferer
from medxai.errors import InputError, MedXAIError
from medxai.explain.boxes import boxes_from_map
from medxai.explain.normalize import relu_max
from medxai.explain.writers import render_montage, to_jsonable, top_slices
from medxai.networks.ct_mil import CTMILNet
from medxai.transforms import CropToLungd, LungMaskd, ResizeSlicesd
from medxai.transforms.outputs import (
    ResizeMapToImaged,
    SplitDetailsd,
    WriteCaseOutputsd,
    output_case_name,
    read_summaries,
    write_predictions_csv,
)

SHAPE = (64, 56, 16)  # X != Y so that a transposed overlay or box would show


@pytest.fixture(scope="module")
def phantom():
    return generate_ct_case(3, "covid19", "severe", "A", SHAPE)


@pytest.fixture(scope="module")
def phantom_file(phantom, tmp_path_factory):
    return save_nifti(phantom.image, phantom.affine, tmp_path_factory.mktemp("ct") / "ct_0003.nii.gz")


def _preprocessing() -> Compose:
    return Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            LungMaskd("image"),
            CropToLungd("image"),
            ResizeSlicesd("image", size=(32, 32)),
            ScaleIntensityRanged("image", -1000.0, 400.0, 0.0, 1.0, clip=True),
        ]
    )


# ------------------------------------------------------------------------------------------ SplitDetailsd


def test_split_details_moves_each_detail_and_sets_pred_to_the_logits():
    batch = {
        "image": torch.zeros(2, 1, 8, 8, 4),
        "pred": {
            "patient_logits": torch.tensor([[0.5, -1.0], [2.0, 3.0]]),
            "patient_probs": torch.sigmoid(torch.tensor([[0.5, -1.0], [2.0, 3.0]])),
            "slice_scores": torch.arange(16.0).reshape(2, 4, 2),
            "section_probs": torch.tensor([[[0.1, 0.9]], [[0.3, 0.7]]]),
            "cams": torch.arange(2 * 2 * 2 * 2 * 4, dtype=torch.float32).reshape(2, 2, 2, 2, 4),
            "features": torch.ones(2, 4, 3),
        },
    }
    cases = [SplitDetailsd("pred")(item) for item in decollate_batch(batch)]
    assert cases[1]["pred"].tolist() == [2.0, 3.0]
    assert cases[0]["slice_scores"].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
    assert cases[1]["section_probs"][0].tolist() == pytest.approx([0.3, 0.7])
    assert cases[1]["cams"].shape == (2, 2, 2, 4) and float(cases[1]["cams"][0, 0, 0, 0]) == 32.0
    assert cases[0]["patient_probs"].tolist() == pytest.approx([0.6224593, 0.2689414])
    assert "features" not in cases[0]  # only the listed details move

    prefixed = SplitDetailsd("pred", details=("cams",), prefix="pred_")(decollate_batch(batch)[0])
    assert set(prefixed) == {"image", "pred", "pred_cams"} and prefixed["pred"].tolist() == [0.5, -1.0]

    # a plain prediction (SimpleInferer) passes through, so one postprocessing serves both inferers
    plain = {"pred": torch.tensor([1.0, 2.0])}
    assert SplitDetailsd("pred")(plain)["pred"] is plain["pred"]

    # a baseline without SIM has no section_probs: skipped, or refused on request
    no_sections = {"pred": {"patient_logits": torch.zeros(2), "cams": torch.zeros(2, 1, 1, 3)}}
    assert "section_probs" not in SplitDetailsd("pred")(no_sections)
    with pytest.raises(InputError, match="no detail 'section_probs'"):
        SplitDetailsd("pred", details=("cams", "section_probs"), allow_missing_details=False)(no_sections)
    with pytest.raises(InputError, match="without 'patient_logits'.*cams"):
        SplitDetailsd("pred")({"pred": {"cams": torch.zeros(1)}})
    with pytest.raises(InputError, match="share the prefix"):
        SplitDetailsd(["pred", "pred2"])


# ------------------------------------------------------------------------------------- ResizeMapToImaged


def _image(shape, affine=None, name="/site/Doe_John/ct_0007.nii.gz") -> MetaTensor:
    affine = np.diag([0.7, 0.8, 5.0, 1.0]) if affine is None else affine
    image = MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(affine), meta={"filename_or_obj": name})
    image.applied_operations = [{"class": "Crop", "extra_info": {"cropped": [1, 1, 2, 2, 0, 0]}}]
    return image


def test_resize_map_values_at_known_voxels_and_metadata():
    # a 2 x 2 map over 3 slices -> 4 x 4 x 3; align_corners=False puts output pixel i at source (i + 0.5) / 2 - 0.5,
    # i.e. -0.25, 0.25, 0.75, 1.25 (clamped at the edges): values v0, 0.75 v0 + 0.25 v1, 0.25 v0 + 0.75 v1, v1
    cams = torch.zeros(2, 2, 2, 3)
    cams[0, 1, :, :] = 4.0  # rows 0 -> 0, 1 -> 4, constant along W
    cams[1, :, :, 1] = 2.0  # only the middle slice
    image = _image((4, 4, 3))
    out = ResizeMapToImaged("cams")({"image": image, "cams": cams})["cams"]
    assert out.shape == (2, 4, 4, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, :, 2, 0].numpy(), [0.0, 1.0, 3.0, 4.0], atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 2].numpy(), np.repeat([[0.0], [1.0], [3.0], [4.0]], 4, axis=1), atol=1e-6)
    # depth unchanged: the slices are not mixed (resampling an axis to its own size is exact)
    np.testing.assert_allclose(out[1, :, :, 1].numpy(), 2.0, atol=1e-6)
    np.testing.assert_allclose(out[1, :, :, [0, 2]].numpy(), 0.0, atol=1e-6)
    # image metadata and transform trace are copied, not shared
    np.testing.assert_array_equal(out.affine.numpy(), image.affine.numpy())
    assert out.meta["filename_or_obj"] == image.meta["filename_or_obj"]
    assert out.applied_operations == image.applied_operations
    out.applied_operations[0]["class"] = "changed"
    assert image.applied_operations[0]["class"] == "Crop"

    nearest = ResizeMapToImaged("cams", mode="nearest")({"image": image, "cams": cams})["cams"]
    np.testing.assert_array_equal(nearest[0, :, 0, 0].numpy(), [0.0, 0.0, 4.0, 4.0])

    with pytest.raises(InputError, match="ct_0007.nii.gz.*maps \\(C, h, w, D\\) under 'cams'"):
        ResizeMapToImaged("cams")({"image": image, "cams": torch.zeros(2, 2, 3)})
    with pytest.raises(InputError, match="unknown mode 'cubic'"):
        ResizeMapToImaged("cams", mode="cubic")


def test_resized_map_inverts_into_the_original_geometry(phantom, phantom_file, tmp_path):
    preprocessing = _preprocessing()
    data = preprocessing({"image": str(phantom_file)})
    image = data["image"]
    assert tuple(image.shape) == (1, 32, 32, SHAPE[2])
    # a trunk-resolution map (1/4, as the tiny trunk), 1 inside feature cells rows 2-4, columns 3-5, slices 5-9
    feature_box = (slice(2, 5), slice(3, 6), slice(5, 10))
    cams = torch.zeros(2, 8, 8, SHAPE[2])
    cams[1][feature_box] = 1.0
    data["cams"] = cams
    data = ResizeMapToImaged("cams", mode="nearest")(data)
    # on the preprocessed grid: pixels 8-19 and 12-23 (4 per cell), slices 5-9
    on_grid = data["cams"][1].numpy()
    assert on_grid.sum() == 12 * 12 * 5 and on_grid[8:20, 12:24, 5:10].min() == 1.0

    inverted = Invertd("cams", preprocessing, orig_keys="image", nearest_interp=False)(data)["cams"]
    assert tuple(inverted.shape) == (2, *SHAPE)
    np.testing.assert_allclose(inverted.affine.numpy(), phantom.affine, atol=1e-9)

    # Independently: the box's physical extent from the preprocessed image's affine (voxel edges -0.5 / +0.5),
    # and each original voxel centre in world coordinates from the phantom's affine.
    pre_affine = image.affine.numpy()
    low = pre_affine @ np.array([8 - 0.5, 12 - 0.5, 5 - 0.5, 1.0])
    high = pre_affine @ np.array([19 + 0.5, 23 + 0.5, 9 + 0.5, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).reshape(-1, 3)
    world = (phantom.affine[:3, :3] @ grid.T).T + phantom.affine[:3, 3]
    pre_spacing = np.abs(np.diag(pre_affine)[:3])
    depth = np.minimum(world - low[:3], high[:3] - world)  # > 0 inside, per axis
    deep_inside = np.all(depth >= 0.5 * pre_spacing, axis=1)
    far_outside = np.any(depth <= -pre_spacing, axis=1)
    values = inverted[1].numpy().reshape(-1)
    assert deep_inside.sum() > 50
    np.testing.assert_allclose(values[deep_inside], 1.0)
    np.testing.assert_allclose(values[far_outside], 0.0)
    # the map's mass centre in mm is the box's centre (within half an original voxel)
    centre_mm = (values[:, None] * world).sum(0) / values.sum()
    assert np.all(np.abs(centre_mm - (low[:3] + high[:3]) / 2) <= 0.5 * np.abs(np.diag(phantom.affine)[:3]))

    # SaveImaged writes it as NIfTI with the input's affine and grid (classes on the last axis)
    saved = SaveImaged("cams", output_dir=tmp_path, output_postfix="cams", separate_folder=False, resample=False)(
        {"cams": inverted}
    )
    assert saved["cams"] is not None
    written = nib.load(tmp_path / "ct_0003_cams.nii.gz")
    assert written.shape == (*SHAPE, 2)
    np.testing.assert_allclose(written.affine, phantom.affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(written.dataobj)[..., 1], inverted[1].numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------- case names


def test_case_names_keep_file_stems_and_pseudonymise_the_rest():
    assert output_case_name("/data/site_a/ct_0003.nii.gz") == "ct_0003"
    assert output_case_name("C:\\scans\\ct-12.v2.mha") == "ct-12.v2"
    # unsafe characters (often a patient's name) -> pseudonym of the base name, not of the folder
    assert output_case_name("/data/a/Doe, John.nii.gz") == pseudonym("Doe, John")
    assert output_case_name("/data/b/Doe, John.nii.gz") == pseudonym("Doe, John")
    assert output_case_name("/x/Müller.nii") == pseudonym("Müller")
    assert output_case_name("/x/..hidden.nii.gz") == pseudonym("..hidden")
    # DICOM series folders and files -> pseudonym of the whole path (series names repeat across patients)
    folder = output_case_name("/dicom/DOE^JOHN/series_1/")
    assert folder == pseudonym("/dicom/DOE^JOHN/series_1") and re.fullmatch(r"pt-[0-9a-f]{12}", folder)
    assert output_case_name("/dicom/SMITH^ANN/series_1") != folder
    assert output_case_name("/dicom/p1/IM0001.dcm") == pseudonym("/dicom/p1/IM0001.dcm")
    assert output_case_name("/data/ct_0003.nii.gz", pseudonymize=True) == pseudonym("ct_0003")


# ------------------------------------------------------------------------------------------ case outputs


def _left_lower_box(phantom) -> tuple[slice, slice, slice]:
    """A 5 x 5 x 2 voxel box inside the left lung (label 2), in the two most caudal slices of its lower zone."""
    left = phantom.lung_mask == 2
    rows = np.nonzero(left.any(axis=(0, 1)))[0]
    extent = rows[-1] - rows[0] + 1
    # RAS: caudal = low slice index; slices z with (rows[-1] - z + 0.5) / extent >= 2/3 form the lower zone
    lower = [int(z) for z in rows if (rows[-1] - z + 0.5) / extent >= 2 / 3]
    best = None
    for z in lower[:-1]:
        core = ndimage.binary_erosion(left[:, :, z] & left[:, :, z + 1], structure=np.ones((5, 5)))
        if core.any() and (best is None or core.sum() > best[1].sum()):
            best = (z, core)
    assert best is not None
    z, core = best
    xs, ys = np.nonzero(core)
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    cx, cy = int(xs[nearest]), int(ys[nearest])
    box = (slice(cx - 2, cx + 3), slice(cy - 2, cy + 3), slice(z, z + 2))
    assert left[box].all()
    return box


def _case_data(phantom, cams, name="/site/patient_x/ct_0003.nii.gz"):
    meta = {"filename_or_obj": name, "PatientName": "DOE^JOHN"}
    affine = torch.as_tensor(phantom.affine)
    return {
        "image": MetaTensor(torch.from_numpy(phantom.image)[None], affine=affine, meta=dict(meta)),
        "lung_mask": MetaTensor(torch.from_numpy(phantom.lung_mask)[None], affine=affine, meta=dict(meta)),
        "cams": MetaTensor(cams, affine=affine, meta=dict(meta)),
        "pred": torch.tensor([-1.5, 2.0]),
        "patient_probs": torch.sigmoid(torch.tensor([-1.5, 2.0])),
        "slice_scores": torch.linspace(-1, 1, SHAPE[2] * 2).reshape(SHAPE[2], 2),
        "section_probs": torch.tensor([[0.2, 0.6], [0.1, 0.95]]),
    }


def test_case_outputs_boxes_summary_sentence_and_overlay(phantom, tmp_path):
    box = _left_lower_box(phantom)
    cams = torch.full((2, *SHAPE), -2.0)  # negative evidence everywhere ...
    cams[1][box] = 3.0  # ... and positive only inside the box
    cams[1][box[0], box[1], box[2].start] = 6.0  # the caudal slice of the box is the strongest
    cams[0] = 1.0
    data = _case_data(phantom, cams)
    writer = WriteCaseOutputsd(tmp_path, top_slices=4, save_map=True)
    out = writer(data)
    folder = tmp_path / "ct_0003"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ct_0003_boxes.json", "ct_0003_map.nii.gz", "ct_0003_overlay.png", "ct_0003_summary.json"
    ]

    # boxes: exactly boxes_from_map on the ReLU'd, max-scaled positive map, with the image's affine
    normalised = relu_max(cams[1].numpy()[None, None])[0, 0]
    expected = to_jsonable(boxes_from_map(normalised, 0.5, "relative", affine=phantom.affine))
    boxes = json.loads((folder / "ct_0003_boxes.json").read_text())
    assert boxes["class"] == "COVID-19" and boxes["normalisation"] == "relu_max"
    assert [{k: v for k, v in b.items() if k != "slice_range"} for b in boxes["boxes"]] == expected
    # threshold 0.5 of the max (6) keeps the whole box (3 and 6): one box, its voxel corners and mm extent
    (only,) = boxes["boxes"]
    assert only["min"] == [box[0].start, box[1].start, box[2].start]
    assert only["max"] == [box[0].stop - 1, box[1].stop - 1, box[2].stop - 1]
    assert only["slice_range"] == [box[2].start, box[2].stop - 1] == boxes["slice_range"]
    spacing = np.diag(phantom.affine)[:3]
    np.testing.assert_allclose(only["min_mm"], phantom.affine[:3, 3] + spacing * (np.array(only["min"]) - 0.5))
    assert only["volume_mm3"] == pytest.approx(50 * float(np.prod(spacing)))
    assert only["score_max"] == 1.0 and only["score_mean"] == pytest.approx((25 * 1.0 + 25 * 0.5) / 50)

    summary = json.loads((folder / "ct_0003_summary.json").read_text())
    assert out["summary"] == summary
    probs = torch.sigmoid(torch.tensor([-1.5, 2.0])).tolist()
    assert summary["probabilities"] == pytest.approx({"non-COVID-19": probs[0], "COVID-19": probs[1]})
    assert summary["predicted_class"] == "COVID-19" and summary["predicted_index"] == 1
    assert summary["slice_scores"]["COVID-19"] == pytest.approx(data["slice_scores"][:, 1].tolist())
    assert summary["section_probabilities"]["COVID-19"] == pytest.approx([0.6, 0.95])
    assert summary["boxes"] == boxes["boxes"]
    # only the two box slices hold mass: slices the map does not touch are left out of the top 4
    assert top_slices(normalised, 4)[-2:] == summary["top_slices"] == [box[2].start, box[2].start + 1]
    # the sentence names the lung and zone where the map is, with the COVID-19 probability
    assert summary["sentence"].startswith(f"COVID-19 (probability {probs[1]:.2f}). The EDM activation map points")
    assert re.search(r"mainly to the (peripheral |central )?lower zone of the left lung\.$", summary["sentence"])

    # the PNG is the montage of those slices with the boxes, one pixel per voxel: 1 x 2 tiles of (X, Y)
    png = np.asarray(Image.open(folder / "ct_0003_overlay.png"))
    assert png.shape == (SHAPE[0], 2 * SHAPE[1], 3)
    reference = render_montage(phantom.image, normalised, boxes["boxes"], slices=summary["top_slices"])
    np.testing.assert_array_equal(png, reference)
    # the raw (not normalised) positive map as NIfTI with the input's affine
    written = nib.load(folder / "ct_0003_map.nii.gz")
    np.testing.assert_allclose(written.affine, phantom.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), cams[1].numpy())

    # deterministic: the same case gives byte-identical files
    WriteCaseOutputsd(tmp_path / "again", top_slices=4, save_map=True)(data)
    for path in folder.iterdir():
        assert (tmp_path / "again" / "ct_0003" / path.name).read_bytes() == path.read_bytes(), path.name

    # no patient identifier from the path or the metadata reaches any output
    for path in folder.iterdir():
        content = path.read_bytes()
        assert b"DOE" not in content and b"patient_x" not in content


def test_sentence_names_where_the_map_is_high_not_its_faint_spread(phantom, tmp_path):
    """A coarse CAM upsampled to the volume spreads faint mass over the body; the sentence follows the peak."""
    box = _left_lower_box(phantom)
    cams = torch.full((2, *SHAPE), 0.2)  # faint positive evidence everywhere: most of its mass is outside the lungs
    cams[1][box] = 3.0
    lung = phantom.lung_mask > 0
    spread = np.full(SHAPE, 0.2)
    assert spread[~lung].sum() > 0.5 * (spread.sum() + 2.8 * 50)  # the whole map would read "outside the lungs"
    out = WriteCaseOutputsd(tmp_path)(_case_data(phantom, cams))
    sentence = out["summary"]["sentence"]
    assert "outside the lungs" not in sentence
    assert re.search(r"mainly to the (peripheral |central )?lower zone of the left lung\.$", sentence)


def test_unsafe_names_are_pseudonymised_and_failures_name_the_case(phantom, tmp_path):
    cams = torch.zeros(2, *SHAPE)
    cams[1, 20:24, 20:24, 6:8] = 1.0
    data = _case_data(phantom, cams, name="/site/Doe, John.nii.gz")
    WriteCaseOutputsd(tmp_path)(data)
    case = pseudonym("Doe, John")
    assert (tmp_path / case / f"{case}_summary.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [case]

    # a map left in the preprocessed grid: refused, naming the case (its output name) and the shapes
    small = _case_data(phantom, torch.zeros(2, 32, 32, SHAPE[2]), name="/site/patient_x/ct_0009.nii.gz")
    with pytest.raises(MedXAIError, match="case 'ct_0009'.*must share one grid.*Invertd") as info:
        WriteCaseOutputsd(tmp_path)(small)
    assert "patient_x" not in str(info.value)
    # same grid, another affine (not inverted): refused
    shifted = _case_data(phantom, cams, name="/a/ct_0010.nii.gz")
    moved = phantom.affine.copy()
    moved[0, 3] += 30.0
    shifted["cams"] = MetaTensor(cams, affine=torch.as_tensor(moved))
    with pytest.raises(InputError, match="case 'ct_0010'.*different affines"):
        WriteCaseOutputsd(tmp_path)(shifted)
    missing = _case_data(phantom, cams, name="/a/ct_0011.nii.gz")
    del missing["lung_mask"]
    with pytest.raises(InputError, match="case 'ct_0011'.*'lung_mask' is missing"):
        WriteCaseOutputsd(tmp_path)(missing)
    with pytest.raises(InputError, match="case 'ct_0012'.*'patient_probs' must hold 2 values"):
        WriteCaseOutputsd(tmp_path)({**_case_data(phantom, cams, "/a/ct_0012.nii"), "patient_probs": torch.ones(3)})
    with pytest.raises(InputError, match="no file name"):
        WriteCaseOutputsd(tmp_path)({**data, "image": torch.zeros(1, *SHAPE)})
    with pytest.raises(InputError, match="path separator"):
        WriteCaseOutputsd(tmp_path, case_name_fn=lambda d: "a/b")(data)
    with pytest.raises(InputError, match="positive_class 2"):
        WriteCaseOutputsd(tmp_path, positive_class=2)


# ------------------------------------------------------------------------------------ the whole workflow


def test_inference_workflow_writes_outputs_in_the_input_geometry_and_a_table(phantom, tmp_path):
    """DetailsInferer + SplitDetailsd + ResizeMapToImaged + Invertd + SaveImaged + WriteCaseOutputsd in a MONAI
    SupervisedEvaluator, as a bundle's inference.json wires them, on two phantom files."""
    files = []
    for name, label in (("ct_0001", "normal"), ("ct_0002", "covid19")):
        case = generate_ct_case(5, label, "severe", "A", SHAPE) if label == "normal" else phantom
        files.append(save_nifti(case.image, case.affine, tmp_path / "in" / f"{name}.nii.gz"))
    preprocessing = _preprocessing()
    torch.manual_seed(0)
    net = CTMILNet("tiny", section_length=4, k=2, use_ncm=False).eval()
    out_dir = tmp_path / "out"
    postprocessing = Compose(
        [
            SplitDetailsd("pred"),
            ResizeMapToImaged("cams", image_key="image"),
            Invertd(["cams", "image"], preprocessing, orig_keys="image", nearest_interp=False),
            SaveImaged("cams", output_dir=out_dir, output_postfix="cams", separate_folder=False, resample=False),
            WriteCaseOutputsd(out_dir, top_slices=2),
        ]
    )
    outputs = []
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset([{"image": str(f)} for f in files], preprocessing), batch_size=1),
        network=net,
        inferer=DetailsInferer(),
        postprocessing=postprocessing,
    )
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.extend(e.state.output))
    evaluator.run()

    for path, item in zip(files, outputs):
        case = path.name[: -len(".nii.gz")]
        with torch.no_grad():
            reference = net.forward_details(preprocessing({"image": str(path)})["image"].as_tensor()[None])
        torch.testing.assert_close(item["pred"], reference["patient_logits"][0], rtol=1e-5, atol=1e-5)
        summary = json.loads((out_dir / case / f"{case}_summary.json").read_text())
        assert summary["probabilities"]["COVID-19"] == pytest.approx(float(reference["patient_probs"][0, 1]), abs=1e-6)
        assert len(summary["slice_scores"]["COVID-19"]) == SHAPE[2]
        assert len(summary["section_probabilities"]["COVID-19"]) == SHAPE[2] // 4
        original = nib.load(path)
        saved = nib.load(out_dir / f"{case}_cams.nii.gz")
        assert saved.shape == (*SHAPE, 2)
        np.testing.assert_allclose(saved.affine, original.affine, atol=1e-5)
        # boxes and sentence come from the inverted map, in the input's voxel and mm coordinates
        inverted = np.asarray(saved.dataobj)[..., 1]
        expected = to_jsonable(boxes_from_map(relu_max(inverted[None, None])[0, 0], affine=original.affine))
        boxes = [{k: v for k, v in b.items() if k != "slice_range"} for b in summary["boxes"]]
        assert len(boxes) == len(expected) >= 1
        for got, want in zip(boxes, expected):
            assert got.keys() == want.keys() and got["min"] == want["min"] and got["max"] == want["max"]
            for key in ("min_mm", "max_mm", "centroid_mm", "volume_mm3", "score_max", "score_mean"):
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-4)
        assert Image.open(out_dir / case / f"{case}_overlay.png").size == (2 * SHAPE[1], SHAPE[0])

    table = write_predictions_csv(read_summaries(out_dir), out_dir / "predictions.csv")
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["ct_0001", "ct_0002"]
    for row, item in zip(rows, outputs):
        assert float(row["probability_COVID-19"]) == pytest.approx(float(item["patient_probs"][1]), abs=1e-6)
        assert float(row["probability_non-COVID-19"]) == pytest.approx(float(item["patient_probs"][0]), abs=1e-6)
        assert row["predicted_class"] == ("COVID-19" if item["patient_probs"][1] > item["patient_probs"][0]
                                          else "non-COVID-19")
        assert row["sentence"] == item["summary"]["sentence"]


def test_predicted_class_is_decided_as_evaluation_decides_it(phantom, tmp_path):
    """Section integration gives each class its own probability (they need not sum to 1): with (0.80, 0.60)
    the argmax would say non-COVID-19 while the evaluation's 0.5 threshold on COVID-19 says COVID-19; the
    summary, the CSV row and the metrics must all say the same."""
    from medxai.metrics.classification import predicted_classes

    cams = torch.zeros((2, *SHAPE))
    cams[1][_left_lower_box(phantom)] = 1.0
    data = _case_data(phantom, cams)
    data["patient_probs"] = torch.tensor([0.80, 0.60])
    summary = WriteCaseOutputsd(tmp_path / "default")(dict(data))["summary"]
    assert summary["predicted_class"] == "COVID-19" and summary["predicted_index"] == 1
    assert predicted_classes(np.array([[0.80, 0.60]]), 0.5, None, 1).tolist() == [1]
    assert summary["sentence"].startswith("COVID-19 (probability 0.60).")
    stricter = WriteCaseOutputsd(tmp_path / "strict", decision_threshold=0.7)(dict(data))["summary"]
    assert stricter["predicted_class"] == "non-COVID-19" and stricter["predicted_index"] == 0
    with pytest.raises(InputError, match="decision_threshold must be in"):
        WriteCaseOutputsd(tmp_path, decision_threshold=1.5)
