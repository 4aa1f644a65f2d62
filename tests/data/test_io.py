"""Reading DICOM series, DICOM X-rays, NIfTI and PNG with medxai.data.io: values, geometry, privacy, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from medxai.data.io import LoadMedicalImaged, detect_image_kind, inspect_dicom_series, load_image
from medxai.data.privacy import pseudonym
from medxai.data.synthetic.io import save_nifti, spacing_affine
from medxai.errors import InputError

from dicom_utils import FAKE_PATIENT_ID, FAKE_PATIENT_NAME, write_ct_series, write_xray_image

N_SLICES, ROWS, COLS = 6, 16, 12


def _ct_hu() -> np.ndarray:
    """(slices, rows, columns): slice k is -1000 + 100 k HU, with a +40 HU marker at row 2, column 3, slice 4."""
    hu = np.repeat((-1000.0 + 100.0 * np.arange(N_SLICES))[:, None, None], ROWS, 1).repeat(COLS, 2)
    hu[4, 2, 3] += 40.0
    return hu


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_ct_series(folder, _ct_hu(), pixel_spacing=(0.7, 0.7), slice_spacing=2.5, origin=(-100.0, -120.0, 30.0))
    return folder


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (2.0, -2048.0)])
def test_dicom_series_hu_shape_and_geometry(tmp_path: Path, slope: float, intercept: float) -> None:
    folder = tmp_path / "ct"
    files = write_ct_series(folder, _ct_hu(), rescale_slope=slope, rescale_intercept=intercept, shuffle_names=True)
    # File names are shuffled: name order is not slice order, so the reader must sort by position.
    assert [f.name for f in files] != sorted(f.name for f in files)
    image = load_image(folder)
    # (channel, x = columns, y = rows, z = slices)
    assert tuple(image.shape) == (1, COLS, ROWS, N_SLICES)
    expected = np.transpose(_ct_hu(), (2, 1, 0))[None]
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-4)
    assert image[0, 3, 2, 4].item() == pytest.approx(-600.0 + 40.0)
    np.testing.assert_allclose(image.meta["spacing"], [0.7, 0.7, 2.5], atol=1e-6)
    # LPS origin (-100, -120, 30) -> RAS (100, 120, 30); x and y axes point to L and P (negative in RAS).
    np.testing.assert_allclose(
        image.affine.numpy(),
        [[-0.7, 0, 0, 100.0], [0, -0.7, 0, 120.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]],
        atol=1e-6,
    )


def test_dicom_series_privacy_and_header_check(ct_series: Path) -> None:
    info = inspect_dicom_series(ct_series)
    assert len(info.files) == N_SLICES
    assert info.slice_spacing == pytest.approx(2.5)
    image = load_image(ct_series)
    assert image.meta["patient_pseudonym"] == pseudonym(FAKE_PATIENT_ID)
    flat = repr(dict(image.meta))
    assert FAKE_PATIENT_NAME.split("^")[0] not in flat and FAKE_PATIENT_ID not in flat


def test_orientation_ras_flips_x_and_y(ct_series: Path) -> None:
    native = load_image(ct_series)
    ras = load_image(ct_series, orientation="RAS")
    np.testing.assert_allclose(ras.numpy(), torch.flip(native, dims=(1, 2)).numpy())
    np.testing.assert_allclose(np.diag(ras.affine.numpy())[:3], [0.7, 0.7, 2.5], atol=1e-6)
    # The first RAS voxel is the old last column/row: x = 100 - 0.7 * 11.
    assert ras.affine[0, 3].item() == pytest.approx(100.0 - 0.7 * (COLS - 1))


def test_dicom_series_errors_name_the_folder_or_file(tmp_path: Path, ct_series: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not dicom")
    with pytest.raises(InputError, match=f"{empty}.*no DICOM image"):
        load_image(empty)

    missing_slice = tmp_path / "gap"
    shutil.copytree(ct_series, missing_slice)
    middle = inspect_dicom_series(missing_slice).files[3]
    middle.unlink()
    with pytest.raises(InputError, match=f"{missing_slice}.*uneven slice gaps from 2.500 to 5.000 mm"):
        load_image(missing_slice)

    truncated = tmp_path / "truncated"
    shutil.copytree(ct_series, truncated)
    victim = inspect_dicom_series(truncated).files[2]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(InputError, match=f"{truncated}.*read 5 of 6 slices.*{victim.name}"):
        load_image(truncated)

    two = tmp_path / "two_series"
    write_ct_series(two, _ct_hu()[:3])
    write_ct_series(two, _ct_hu()[:2], origin=(0.0, 0.0, 0.0))
    with pytest.raises(InputError, match=f"{two} holds 2 series"):
        load_image(two)

    with pytest.raises(InputError, match=f"{tmp_path / 'nowhere'} does not exist"):
        load_image(tmp_path / "nowhere")


@pytest.mark.parametrize("photometric, expected", [("MONOCHROME2", 100.0), ("MONOCHROME1", 4095.0 - 100.0)])
def test_single_dicom_xray(tmp_path: Path, photometric: str, expected: float) -> None:
    stored = np.zeros((5, 4), dtype=np.uint16)
    stored[1, 2] = 100
    path = write_xray_image(tmp_path / "cxr.dcm", stored, pixel_spacing=(0.14, 0.15), photometric=photometric)
    image = load_image(path)
    assert tuple(image.shape) == (1, 4, 5)  # (channel, columns, rows): a single frame is 2D
    assert image[0, 2, 1].item() == pytest.approx(expected)  # MONOCHROME1 is inverted: 2**12 - 1 - stored
    # x runs along columns (column spacing 0.15 mm), y along rows (row spacing 0.14 mm).
    np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy())[:2]), [0.15, 0.14], atol=1e-6)
    assert "0010|0010" not in image.meta and "0010|0020" not in image.meta
    assert image.meta["0028|0004"].strip() == photometric
    assert FAKE_PATIENT_ID not in repr(dict(image.meta))
    assert image.meta["patient_pseudonym"] == pseudonym(FAKE_PATIENT_ID)


def test_png_round_trip_and_axis_order(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7), dtype=np.uint8)  # rows x columns
    Image.fromarray(pixels).save(tmp_path / "xray.png")
    image = load_image(tmp_path / "xray.png")
    assert tuple(image.shape) == (1, 7, 5)
    np.testing.assert_array_equal(image[0].numpy(), pixels.T.astype(np.float32))
    np.testing.assert_array_equal(image.affine.numpy(), np.eye(4))

    rgb = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    assert tuple(load_image(tmp_path / "colour.png").shape) == (3, 7, 5)
    gray = load_image(tmp_path / "colour.png", grayscale=True)
    expected = np.asarray(Image.fromarray(rgb).convert("L")).T  # ITU-R 601 luma, as PIL computes it
    np.testing.assert_array_equal(gray[0].numpy(), expected.astype(np.float32))


def test_png_slice_stack_is_a_volume(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    slices = [rng.integers(0, 256, size=(6, 4), dtype=np.uint8) for _ in range(3)]
    paths = []
    for k, s in enumerate(slices):
        paths.append(tmp_path / f"{k:04d}.png")
        Image.fromarray(s).save(paths[-1])
    volume = load_image(paths, stack_spacing=5.0)
    assert tuple(volume.shape) == (1, 4, 6, 3)
    for k, s in enumerate(slices):
        np.testing.assert_array_equal(volume[0, :, :, k].numpy(), s.T.astype(np.float32))
    np.testing.assert_allclose(np.diag(volume.affine.numpy()), [1.0, 1.0, 5.0, 1.0])


def test_nifti_round_trip(tmp_path: Path) -> None:
    volume = np.random.default_rng(2).normal(size=(5, 6, 4)).astype(np.float32)
    affine = spacing_affine((0.8, 0.9, 3.0), origin=(-10.0, 20.0, 5.0))
    path = save_nifti(volume, affine, tmp_path / "ct.nii.gz")
    image = load_image(path)
    assert tuple(image.shape) == (1, 5, 6, 4)
    np.testing.assert_array_equal(image[0].numpy(), volume)
    np.testing.assert_allclose(image.affine.numpy(), affine)


def test_truncated_and_unknown_files_raise_input_error(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"cannot read raster {tmp_path / 'cut.png'}"):
        load_image(tmp_path / "cut.png")

    path = save_nifti(np.ones((8, 8, 8), np.float32), np.eye(4), tmp_path / "vol.nii.gz")
    data = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"cannot read nifti {tmp_path / 'cut.nii.gz'}"):
        load_image(tmp_path / "cut.nii.gz")

    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=f"cannot tell the format of {tmp_path / 'table.csv'}"):
        detect_image_kind(tmp_path / "table.csv")
    with pytest.raises(InputError, match=f"{tmp_path / 'gone.png'} does not exist"):
        load_image(tmp_path / "gone.png")


def test_dictionary_transform_from_a_bundle_config(tmp_path: Path, ct_series: Path) -> None:
    mask = np.zeros((COLS, ROWS, N_SLICES), dtype=np.uint8)
    mask[3, 2, 4] = 1
    mask_path = save_nifti(mask, np.eye(4), tmp_path / "mask.nii.gz", dtype=np.uint8)
    parser = ConfigParser({"load": {"_target_": "medxai.data.io.LoadMedicalImaged", "keys": ["image", "label"]}})
    transform = parser.get_parsed_content("load")
    assert isinstance(transform, LoadMedicalImaged)
    out = transform({"image": str(ct_series), "label": str(mask_path), "patient_id": "kept"})
    assert out["patient_id"] == "kept"
    assert tuple(out["image"].shape) == tuple(out["label"].shape) == (1, COLS, ROWS, N_SLICES)
    # The marker voxel of the CT is where the mask is set.
    assert out["image"][out["label"] > 0].tolist() == [pytest.approx(-560.0)]
