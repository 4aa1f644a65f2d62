"""CT volume sanity checks: every failure is an InputError naming the case by its file's base name."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from medxai.data.synthetic.ct import generate_ct_case
from medxai.errors import InputError
from medxai.transforms import CheckVolume, CheckVolumed, case_name

PATH = "/archive/Mustermann_Max/series_3/ct_0021.nii.gz"  # the folders carry a patient name


def _tensor(array: np.ndarray, path: str = PATH) -> MetaTensor:
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array)), meta={"filename_or_obj": path})


def _chest(shape=(16, 16, 12)) -> np.ndarray:
    """(1, H, W, D) in HU: air around soft tissue with air-filled lungs."""
    hu = np.full((1, *shape), -1000.0, dtype=np.float32)
    hu[0, 2:-2, 2:-2] = 40.0
    hu[0, 4:8, 4:12] = -850.0
    return hu


def _raises(volume: MetaTensor, match: str, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as err:
        CheckVolumed("image", **kwargs)({"image": volume})
    message = str(err.value)
    assert "case 'ct_0021.nii.gz' (key 'image')" in message
    assert "Mustermann" not in message and "archive" not in message
    return message


def test_valid_volumes_pass_unchanged():
    volume = _tensor(_chest())
    data = {"image": volume, "label": 1}
    out = CheckVolumed("image", min_slices=12)(data)
    assert out["image"] is volume and out["label"] == 1
    case = generate_ct_case(0, "covid19", "mild", "C", (48, 48, 16))  # calibration drift stays plausible HU
    assert CheckVolume(min_slices=16)(case.image[None]) is not None
    integer = _chest().astype(np.int16)  # CT storage type
    assert CheckVolume()(torch.from_numpy(integer)) is not None


@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 16, 16), r"2D image of shape \(1, 16, 16\) where a 3D volume"),  # a PNG slice
        ((1, 16, 16, 12, 3), r"5 dimensions.*time series"),  # 4D time series with a channel
        ((3, 16, 16, 12), r"3 channels.*RGB"),  # RGB CT screenshot stack
        ((10, 16, 16, 12), r"10 channels.*time series"),  # time points loaded as channels
    ],
)
def test_wrong_dimensionality(shape, match):
    _raises(_tensor(np.zeros(shape, np.float32)), match)


def test_empty_and_short_volumes():
    assert "(1, 16, 0, 12)" in _raises(_tensor(np.zeros((1, 16, 0, 12), np.float32)), r"empty volume")
    message = _raises(_tensor(_chest((16, 16, 12))), r"12 slice\(s\).*min_slices = 16", min_slices=16)
    assert "(1, 16, 16, 12)" in message


def test_non_finite_voxels_are_counted():
    hu = _chest()
    hu[0, 3, 3, 3] = np.nan
    hu[0, 4, 4, 4] = np.nan
    hu[0, 5, 5, 5] = np.inf
    _raises(_tensor(hu), rf"2 NaN and 1 infinite voxel\(s\) of {hu.size}")


def test_constant_volume():
    _raises(_tensor(np.full((1, 8, 8, 4), -1024.0, np.float32)), r"constant volume \(every voxel is -1024\)")


def test_values_not_in_hounsfield_units():
    hu = _chest()
    # rescale intercept applied twice (-1024 twice): air at -2024, soft tissue at -984, nothing denser than fat
    _raises(_tensor(hu - 1024.0), r"maximum -984 is below -500 HU")
    # windowed / normalised to [0, 1]: no air
    normalised = (hu + 1000.0) / 1040.0
    _raises(_tensor(normalised), r"minimum 0 is above -500 HU.*normalised")
    # raw DICOM stored values, rescale intercept (-1024) not applied: air is stored as 24
    _raises(_tensor(hu + 1024.0), r"minimum 24 is above -500 HU.*rescale intercept")
    # beyond the int16 range of CT storage
    wild = hu.copy()
    wild[0, 0, 0, 0] = 1e6
    _raises(_tensor(wild), r"values in \[-1000, 1e\+06\] exceed the Hounsfield-unit limits")
    # every HU check can be switched off, e.g. for masks
    CheckVolumed("image", min_max_hu=None, max_min_hu=None, hu_limits=None)({"image": _tensor(normalised)})


def test_case_name_sources():
    assert case_name(_tensor(_chest())) == "ct_0021.nii.gz"
    assert case_name(_tensor(_chest(), path="C:\\scans\\Doe\\ct_0001.nii.gz")) == "ct_0001.nii.gz"
    assert case_name(_tensor(_chest(), path="/dicom/Doe/series_12/")) == "series_12"  # a DICOM series folder
    assert case_name(torch.zeros(2)) == "<unnamed>"
    batch = MetaTensor(torch.zeros(2, 1, 4, 4, 4), meta={"filename_or_obj": ["/a/ct_1.nii.gz", "/a/ct_2.nii.gz"]})
    assert case_name(batch) == "ct_1.nii.gz"
    with pytest.raises(InputError, match="case '<unnamed>'"):
        CheckVolume()(np.zeros((1, 4, 4)))
    with pytest.raises(InputError, match="min_slices"):
        CheckVolumed("image", min_slices=0)


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI probes a GPU DICOM codec
def test_loaded_nifti_names_its_file(tmp_path):
    folder = tmp_path / "Doe_Jane"
    folder.mkdir()
    hu = _chest()[0]
    hu[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(hu, np.eye(4)), folder / "ct_0005.nii.gz")
    load = LoadImaged("image", reader="NibabelReader", image_only=True)
    pipeline = Compose([load, EnsureChannelFirstd("image"), CheckVolumed("image")])
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps the error, keeping it as the cause
        pipeline({"image": str(folder / "ct_0005.nii.gz")})
    cause = err.value.__cause__
    assert isinstance(cause, InputError)
    assert str(cause) == "case 'ct_0005.nii.gz' (key 'image'): 1 NaN and 0 infinite voxel(s) of 3072."
    assert "Doe_Jane" not in str(err.value)


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI probes a GPU DICOM codec
@pytest.mark.real_data
def test_real_png_slice_is_refused_as_2d(shared_data):
    path = shared_data / "covid_ct_ucsd" / "images" / "covid_0003.png"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    pipeline = Compose([LoadImaged("image", reader="PILReader", image_only=True), EnsureChannelFirstd("image")])
    image = pipeline({"image": str(path)})["image"]
    with pytest.raises(InputError, match=r"case 'covid_0003.png' \(key 'image'\): 2D image"):
        CheckVolumed("image")({"image": image})
