"""FaultTolerantDataset / FaultTolerantDataLoader: bad cases are reported, every good case comes out once."""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, Lambdad
from ignite.engine import Events

from medxai.data.fault_tolerant import (
    BadCase,
    FaultTolerantDataLoader,
    FaultTolerantDataset,
    find_case_error,
    write_bad_cases,
)
from medxai.data.io import LoadMedicalImaged
from medxai.data.privacy import pseudonym
from medxai.data.synthetic.io import save_nifti, spacing_affine
from medxai.errors import DatasetError, InputError
from medxai.transforms import CheckVolumed

SHAPE = (8, 8, 4)


def _volume(seed: int) -> np.ndarray:
    """A small CT-like volume in HU: air (-1000) with a block of soft tissue whose value encodes the seed."""
    volume = np.full(SHAPE, -1000.0, dtype=np.float32)
    volume[2:6, 2:6, 1:3] = 10.0 * seed
    return volume


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, object]:
    """Records: good, missing, good, truncated, NaN, 2D, good (in that order)."""
    root = tmp_path_factory.mktemp("cases")
    affine = spacing_affine((1.0, 1.0, 2.0))
    good = {}
    for seed in (1, 2, 3):
        good[f"good_{seed}.nii.gz"] = save_nifti(_volume(seed), affine, root / f"good_{seed}.nii.gz")
    # truncated: a gzip stream cut after the header, in the middle of the (incompressible) voxel data
    noise = np.random.default_rng(0).uniform(-1000.0, 100.0, SHAPE).astype(np.float32)
    full = save_nifti(noise, affine, root / "full.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(full[: int(0.8 * len(full))])
    nan = _volume(5)
    nan[0, 0, 0] = np.nan
    nan[1, 0, 0] = np.nan
    save_nifti(nan, affine, root / "nan.nii.gz")
    save_nifti(_volume(6)[:, :, 0], affine, root / "slice2d.nii.gz")
    order = ["good_1", "missing", "good_2", "truncated", "nan", "slice2d", "good_3"]
    records = [{"image": str(root / f"{name}.nii.gz"), "label": i} for i, name in enumerate(order)]
    return {"root": root, "records": records, "good": ["good_1.nii.gz", "good_2.nii.gz", "good_3.nii.gz"]}


def _transform() -> Compose:
    return Compose([LoadMedicalImaged(keys="image"), CheckVolumed(keys="image")])


def _names(batch: dict) -> list[str]:
    return [Path(f).name for f in batch["image"].meta["filename_or_obj"]]


EXPECTED_BAD = {
    "missing.nii.gz": ("InputError", "does not exist"),
    "truncated.nii.gz": ("InputError", "cannot read nifti"),  # raised by LoadMedicalImage from nibabel's EOFError
    "nan.nii.gz": ("InputError", "2 NaN and 0 infinite voxel(s) of 256"),
    "slice2d.nii.gz": ("InputError", "2D image of shape (1, 8, 8) where a 3D volume"),
}


def _check_bad_cases(bad_cases: list[BadCase]) -> None:
    assert [b.case for b in bad_cases] == list(EXPECTED_BAD)  # in record order
    assert [b.index for b in bad_cases] == [1, 3, 4, 5]
    for bad in bad_cases:
        kind, reason = EXPECTED_BAD[bad.case]
        assert bad.error.startswith(f"{kind}: ") and reason in bad.error, bad.error
        assert "\n" not in bad.error


def test_dataset_returns_a_bad_case_marker_with_the_reason(cases):
    dataset = FaultTolerantDataset(cases["records"], transform=_transform())
    assert len(dataset) == 7
    item = dataset[0]
    assert torch.equal(item["image"][0], torch.as_tensor(_volume(1)))  # the good case is loaded intact
    for index in (1, 3, 4, 5):
        assert isinstance(dataset[index], BadCase)
    _check_bad_cases([dataset[i] for i in (1, 3, 4, 5)])
    assert dataset[3].error.endswith("EOFError: Compressed file ended before the end-of-stream marker was reached")


@pytest.mark.parametrize("num_workers, batch_size", [(0, 1), (2, 1), (2, 2)])
def test_loader_yields_exactly_the_good_cases_in_order_and_reports_the_bad(
    cases, tmp_path, caplog, num_workers, batch_size
):
    report = tmp_path / "out" / "bad_cases.json"
    loader = FaultTolerantDataLoader(
        FaultTolerantDataset(cases["records"], transform=_transform()),
        batch_size=batch_size,
        num_workers=num_workers,
        report_path=report,
    )
    with caplog.at_level(logging.INFO, logger="medxai.data.fault_tolerant"):
        batches = list(loader)
    names = [n for batch in batches for n in _names(batch)]
    assert names == cases["good"]  # each good case exactly once, in record order
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [0, 2, 6]
    # the tissue block of each good case carries its seed: the right volume came with the right record
    assert [float(b["image"][i].max()) for b in batches for i in range(len(b["image"]))] == [10.0, 20.0, 30.0]
    assert all(len(b["image"]) > 0 for b in batches)  # no empty batch reaches the engine
    _check_bad_cases(loader.bad_cases)
    assert loader.num_cases == 7
    assert json.loads(report.read_text()) == [b.to_dict() for b in loader.bad_cases]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    per_case = [w for w in warnings if w.startswith("skipped case ")]
    assert [w.split(":")[0] for w in per_case] == [f"skipped case {n}" for n in EXPECTED_BAD]
    assert any(w.startswith("4 of 7 cases skipped") for w in warnings)


def test_a_second_pass_starts_a_fresh_report(cases):
    loader = FaultTolerantDataLoader(FaultTolerantDataset(cases["records"], transform=_transform()), batch_size=1)
    assert len(list(loader)) == 3 and len(list(loader)) == 3
    assert len(loader.bad_cases) == 4 and loader.num_cases == 7


def test_all_good_writes_an_empty_report(cases, tmp_path, caplog):
    report = tmp_path / "bad_cases.json"
    good = [cases["records"][i] for i in (0, 2, 6)]
    loader = FaultTolerantDataLoader(FaultTolerantDataset(good, transform=_transform()), report_path=report)
    with caplog.at_level(logging.INFO, logger="medxai.data.fault_tolerant"):
        assert len(list(loader)) == 3
    assert json.loads(report.read_text()) == []
    assert any(r.getMessage().startswith("0 of 3 cases skipped") for r in caplog.records)


def test_all_bad_writes_the_report_then_raises(cases, tmp_path):
    report = tmp_path / "bad_cases.json"
    bad = [cases["records"][i] for i in (1, 4)]
    loader = FaultTolerantDataLoader(FaultTolerantDataset(bad, transform=_transform()), report_path=report)
    with pytest.raises(DatasetError, match="all 2 cases failed"):
        list(loader)
    assert [e["case"] for e in json.loads(report.read_text())] == ["missing.nii.gz", "nan.nii.gz"]


def test_monai_loadimaged_read_errors_are_bad_cases_too(cases, tmp_path):
    """Bundles that load with MONAI's own LoadImaged (no medxai wrapping) get the same reports."""
    from monai.transforms import LoadImaged

    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    records = [cases["records"][i] for i in (1, 3)] + [{"image": str(tmp_path / "junk.png")}]
    dataset = FaultTolerantDataset(records, transform=Compose([LoadImaged(keys="image")]))
    errors = [dataset[i].error for i in range(3)]
    assert errors[0].startswith("FileNotFoundError: ")
    assert errors[1] == "EOFError: Compressed file ended before the end-of-stream marker was reached"
    assert errors[2].startswith("UnidentifiedImageError: cannot identify image file")


def test_programming_errors_are_not_swallowed(cases):
    def broken(image):
        raise TypeError("unsupported operand")

    transform = Compose([LoadMedicalImaged(keys="image"), Lambdad(keys="image", func=broken)])
    loader = FaultTolerantDataLoader(FaultTolerantDataset(cases["records"][:1], transform=transform))
    with pytest.raises(RuntimeError) as info:
        list(loader)
    assert isinstance(find_case_error(info.value), type(None))
    chain, error = [], info.value
    while error is not None:
        chain.append(type(error))
        error = error.__cause__
    assert TypeError in chain


def test_find_case_error_walks_the_compose_cause_chain():
    root = InputError("case 'x.nii.gz': empty volume")
    try:
        try:
            try:
                raise root
            except InputError as err:
                raise RuntimeError("applying transform <CheckVolumed>") from err
        except RuntimeError as err:
            raise RuntimeError("applying transform <Compose>") from err
    except RuntimeError as wrapped:
        assert find_case_error(wrapped) is root
    assert isinstance(find_case_error(zlib.error("bad")), zlib.error)
    assert isinstance(find_case_error(gzip.BadGzipFile("bad")), OSError)
    assert find_case_error(KeyError("image")) is None
    assert find_case_error(RuntimeError("applying transform")) is None


def test_pseudonymised_names_keep_the_path_out_of_the_report(cases):
    record = cases["records"][1]  # missing file, its name standing for a patient identifier
    dataset = FaultTolerantDataset([record], transform=_transform(), case_name_fn=pseudonym)
    bad = dataset[0]
    assert bad.case == pseudonym(record["image"])
    assert "missing" not in bad.error and str(cases["root"]) not in bad.error
    assert bad.error == f"InputError: image file or folder {bad.case} does not exist."


def test_supervised_evaluator_runs_once_per_good_case(cases):
    """MONAI's evaluator on a loader without length: one iteration per good batch, no case read twice."""
    loader = FaultTolerantDataLoader(FaultTolerantDataset(cases["records"], transform=_transform()), batch_size=1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Flatten(), decollate=False
    )
    assert evaluator.state.epoch_length is None
    seen: list[str] = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.extend(_names(e.state.batch)))
    evaluator.run()
    assert seen == cases["good"]
    assert evaluator.state.iteration == 3 and evaluator.state.epoch_length == 3
    assert [b.case for b in loader.bad_cases] == list(EXPECTED_BAD)


def test_write_bad_cases_and_argument_checks(tmp_path):
    entries = [BadCase(0, "a.nii.gz", "InputError: x"), {"case": "b", "error": "OSError: y"}]
    path = write_bad_cases(entries, tmp_path / "r.json")
    assert json.loads(path.read_text()) == [
        {"case": "a.nii.gz", "error": "InputError: x"},
        {"case": "b", "error": "OSError: y"},
    ]
    with pytest.raises(InputError, match="exactly the keys"):
        write_bad_cases([{"case": "a"}], tmp_path / "r.json")
    with pytest.raises(InputError, match="case_errors"):
        FaultTolerantDataset([], case_errors=["OSError"])
    with pytest.raises(InputError, match="batch_size"):
        FaultTolerantDataLoader(FaultTolerantDataset([]), batch_size=None)
    with pytest.raises(TypeError, match="no length"):
        len(FaultTolerantDataLoader(FaultTolerantDataset([])))
