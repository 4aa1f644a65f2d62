"""Dataset builders and datalists: counts against the manifests, patient-disjoint splits, k folds, errors.

Real staged subsets come from ``../shared/data`` (skipped when absent); the other datasets' layouts are
fabricated in ``tmp_path`` with tiny PNG/NIfTI files. Expected counts are computed independently here
with the ``csv`` module.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from monai.auto3dseg.utils import datafold_read
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from medxai.data.datasets import (
    build_datalist,
    build_records,
    get_dataset_spec,
    list_datasets,
    merge_groups,
    read_near_duplicates,
    split_records,
)
from medxai.data.io import LoadMedicalImaged
from medxai.data.privacy import pseudonym
from medxai.data.synthetic.io import save_nifti, save_png
from medxai.errors import DatasetError

UCSD = "covid_ct_ucsd"
IEEE = "cxr_ieee8023_lungmasks"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _png(path: Path, value: int = 0, shape: tuple[int, int] = (6, 5)) -> Path:
    return save_png(np.full(shape, value, dtype=np.uint8), path)


def _patients_by_split(datalist: dict, key: str = "patient_id") -> dict[str, set[str]]:
    return {name: {r[key] for r in items if key in r} for name, items in datalist.items() if name != "metadata"}


def _assert_disjoint(groups: dict[str, set[str]]) -> None:
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not groups[a] & groups[b], f"{a} and {b} share {sorted(groups[a] & groups[b])[:3]}"


# ------------------------------------------------------------------------------------------ real subsets
def test_registry_lists_every_dataset() -> None:
    expected = {
        "covid_ct_ucsd", "covid_ct_ucsd_manifest", "sars_cov2_ct", "cc_ccii", "mosmeddata", "medseg100_manifest",
        "covidx_cxr", "kermany_cxr", "kermany_cxr_manifest", "ieee8023_cxr", "ieee8023_cxr_manifest",
        "brain_ventricles_bert_manifest", "brain_ventricles_carrieri_manifest", "csv", "folder",
    }
    assert expected <= set(list_datasets())
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        build_records("nope", ".")


def test_ucsd_manifest_counts_labels_and_patients(shared_data: Path) -> None:
    root = shared_data / UCSD
    rows = _rows(root / "manifest.csv")
    records = build_records("covid_ct_ucsd_manifest", root)
    assert len(records) == len(rows) == 547
    assert Counter(r["class_name"] for r in records) == Counter(row["label"] for row in rows)
    by_image = {str(root / row["file"]): row for row in rows}
    for record in records:
        row = by_image[record["image"]]
        assert record["label"] == int(row["label_index"])
        assert record["patient_id"] == row["patient_id"]
        assert record["source_split"] == row["split"]


def test_ucsd_patient_split_datalist_loads_with_monai(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / UCSD
    out = tmp_path / "datalist.json"
    datalist = build_datalist("covid_ct_ucsd_manifest", root, output=out, seed=3, pseudonymize=False)
    _assert_disjoint(_patients_by_split(datalist))
    assert sum(len(datalist[k]) for k in ("training", "validation", "test")) == 547
    # Patients (not images) are dealt 70/10/20 within each class: check on patient counts.
    n_patients = {k: len(v) for k, v in _patients_by_split(datalist).items()}
    assert n_patients["test"] == pytest.approx(0.2 * sum(n_patients.values()), abs=2)
    staged = {row["file"]: row["staged_size"] for row in _rows(root / "manifest.csv")}
    loader = LoadImage(image_only=True)
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(out, data_list_key=key, base_dir=root)
        assert len(items) == len(datalist[key])
        for item in items[:2]:
            image = loader(item["image"])
            width, height = (int(v) for v in staged[Path(item["image"]).relative_to(root).as_posix()].split("x"))
            assert tuple(image.shape) == (width, height)  # MONAI's PIL reader: (columns, rows)
    assert json.loads(out.read_text())["training"][0]["image"].startswith("images/")  # relative to the root


def test_predefined_split_keeps_the_manifest_split(shared_data: Path) -> None:
    root = shared_data / UCSD
    expected = Counter(row["split"] for row in _rows(root / "manifest.csv"))
    datalist = build_datalist("covid_ct_ucsd_manifest", root, split="predefined", pseudonymize=False)
    assert len(datalist["training"]) == expected["train"] and len(datalist["validation"]) == expected["val"]
    _assert_disjoint(_patients_by_split(datalist))


def test_kfold_validates_every_record_once_and_stratifies(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / UCSD
    out = tmp_path / "folds.json"
    datalist = build_datalist("covid_ct_ucsd_manifest", root, output=out, split="kfold", n_folds=5, pseudonymize=False)
    training = datalist["training"]
    assert len(training) == 547 and len({r["image"] for r in training}) == 547
    folds = defaultdict(list)
    for record in training:
        folds[record["fold"]].append(record)
    assert sorted(folds) == [0, 1, 2, 3, 4]
    _assert_disjoint({f: {r["patient_id"] for r in items} for f, items in folds.items()})
    overall = sum(r["label"] for r in training) / len(training)
    for items in folds.values():
        assert abs(sum(r["label"] for r in items) / len(items) - overall) < 0.1
    train, val = datafold_read(str(out), basedir=str(root), fold=2)
    assert len(val) == len(folds[2]) and len(train) + len(val) == 547
    assert all(Path(v["image"]).is_file() for v in val)

    held = build_datalist("covid_ct_ucsd_manifest", root, split="kfold", n_folds=3, test_fraction=0.2, seed=1)
    assert len(held["training"]) + len(held["test"]) == 547
    _assert_disjoint(_patients_by_split(held))  # pseudonyms: disjoint too
    written = {r["patient_id"] for r in held["training"] + held["test"]}
    assert written == {pseudonym(row["patient_id"]) for row in _rows(root / "manifest.csv")}
    fold_counts = held["metadata"]["fold_counts"]
    assert sum(sum(c.values()) for c in fold_counts.values()) == len(held["training"])


def test_ieee8023_manifest_masks_views_and_near_duplicates(shared_data: Path) -> None:
    root = shared_data / IEEE
    rows = _rows(root / "manifest.csv")
    records = build_records("ieee8023_cxr_manifest", root)
    assert len(records) == len(rows)
    assert Counter(r["class_name"] for r in records) == Counter(row["label"] for row in rows)
    assert sum("lung_mask" in r for r in records) == sum(bool(row["lung_mask_v7"]) for row in rows)
    assert sum("lesion_mask" in r for r in records) == sum(bool(row["lesion_mask_gb"]) for row in rows)
    pa = build_records("ieee8023_cxr_manifest", root, views=["PA"])
    assert len(pa) == sum(row["view"] == "PA" for row in rows)
    with_lungs = build_records("ieee8023_cxr_manifest", root, require=["lung_mask"])
    assert len(with_lungs) == sum(bool(row["lung_mask_v7"]) for row in rows)
    # one key as a plain string (how `medxai datalist ... --require lung_mask` passes it) means that key
    assert build_records("ieee8023_cxr_manifest", root, require="lung_mask") == with_lungs
    mask = LoadImage(image_only=True)(with_lungs[0]["lung_mask"])
    assert tuple(mask.shape) == tuple(LoadImage(image_only=True)(with_lungs[0]["image"]).shape)
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}

    # Near-duplicate pairs (read independently) whose images are both in the manifest.
    patient_of = {Path(row["file"]).name: row["patient_id"] for row in rows}
    pairs = []
    for line in (root / "near_duplicates.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            a, b = line.split("\t")[:2]
            if a in patient_of and b in patient_of:
                pairs.append((a, b))
    assert pairs and any(patient_of[a] != patient_of[b] for a, b in pairs)  # some cross patients
    for seed in range(4):
        datalist = build_datalist("ieee8023_cxr_manifest", root, seed=seed, pseudonymize=False)
        split_of = {Path(r["image"]).name: k for k, items in datalist.items() if k != "metadata" for r in items}
        assert all(split_of[a] == split_of[b] for a, b in pairs)
        _assert_disjoint(_patients_by_split(datalist))


def test_kermany_manifest_has_no_patient_ids(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = shared_data / "cxr_kermany_skytells_val"
    rows = _rows(root / "manifest.csv")
    records = build_records("kermany_cxr_manifest", root)
    assert Counter(r["class_name"] for r in records) == Counter(row["label"] for row in rows)
    assert not any("patient_id" in r for r in records)
    binary = build_records("kermany_cxr_manifest", root, label_mode="binary")
    n_normal = sum(row["label"] == "normal" for row in rows)
    assert Counter(r["label"] for r in binary) == {0: n_normal, 1: len(rows) - n_normal}
    with caplog.at_level(logging.WARNING):
        datalist = build_datalist("kermany_cxr_manifest", root)
    assert "127 of 127 records have no 'patient_id'" in caplog.text
    assert datalist["metadata"]["patient_ids_known"] is False


def test_medseg_masks_match_the_manifest(shared_data: Path) -> None:
    root = shared_data / "covid_ct_infection_seg_medseg100"
    rows = _rows(root / "manifest.csv")
    records = build_records("medseg100_manifest", root)
    assert len(records) == len(rows) == 50
    assert get_dataset_spec("medseg100_manifest").task == "segmentation"
    loader = LoadImage(image_only=True)
    for record, row in list(zip(records, rows))[:3]:
        assert record["label"] == record["infection_mask"] == str(root / row["infection_mask"])
        infection = loader(record["label"]).numpy()
        multiclass = loader(record["multiclass_mask"]).numpy()
        assert (infection > 0).mean() == pytest.approx(float(row["infection_fraction"]), abs=5e-5)
        assert set(np.unique(multiclass)) <= {0.0, 1.0, 2.0}
        np.testing.assert_array_equal(multiclass > 0, infection > 0)  # GGO + consolidation = infection

def test_segmentation_datalist_loads_with_is_segmentation(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "covid_ct_infection_seg_medseg100"
    out = tmp_path / "seg.json"
    datalist = build_datalist("medseg100_manifest", root, output=out, seed=0)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [35, 5, 10]
    items = load_decathlon_datalist(out, is_segmentation=True, data_list_key="test", base_dir=root)
    assert all(Path(i["label"]).is_file() and Path(i["multiclass_mask"]).is_file() for i in items)


def test_brain_manifests_spacing_matches_the_images(shared_data: Path) -> None:
    root = shared_data / "brain_mri_ventricles_freesurfer_bert"
    records = {r["resolution"]: r for r in build_records("brain_ventricles_bert_manifest", root)}
    assert set(records) == {"thin_1mm", "thick_5mm"}
    for record in records.values():
        image = LoadImage(image_only=True)(record["image"])
        np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy()))[:3], record["spacing_mm"], atol=1e-4)
    carrieri = build_records("brain_ventricles_carrieri_manifest", shared_data / "brain_mri_ventricles_2d_carrieri")
    by_slice = defaultdict(set)
    for record in carrieri:
        by_slice[record["slice"]].add((record["sequence"], record["label"]))
    assert len(carrieri) == 6
    for pairs in by_slice.values():  # T2 and PD of one slice share one mask
        assert {s for s, _ in pairs} == {"T2", "PD"} and len({m for _, m in pairs}) == 1


def test_bert_thick_thin_datalist_trains_on_thick_labels_and_tests_on_thin(shared_data: Path, tmp_path: Path) -> None:
    from medxai.data.datasets.brain import bert_thick_thin_datalist
    from medxai.data.synthetic.brain import generate_brain_dataset

    synthetic = generate_brain_dataset(tmp_path / "synthetic", num_subjects=3, shape=(24, 24, 20),
                                       spacing_mm=(8.0, 8.0, 2.0), fractions={"training": 0.4, "validation": 0.3, "test": 0.3})  # fmt: skip
    root = shared_data / "brain_mri_ventricles_freesurfer_bert"
    path = bert_thick_thin_datalist(root, synthetic, tmp_path / "real")
    content = json.loads(path.read_text())
    bert = [r for r in content["training"] if "freesurfer" in r["image"]]
    assert sorted((Path(r["image"]).parent.name, r["thickness"]) for r in bert) == [("thick_5mm", "thick"), ("thin_1mm", "thin")]
    assert [(Path(r["image"]).parent.name, r["thickness"]) for r in content["test"]] == [("thin_1mm", "thin"), ("thick_5mm", "thick")]
    synthetic_training = json.loads(synthetic.read_text())["training"]
    assert len(content["training"]) == len(synthetic_training) + 2
    assert all(Path(r["image"]).is_file() and Path(r["label"]).is_file() for split in ("training", "validation", "test")
               for r in content[split])  # fmt: skip
    with pytest.raises(DatasetError, match="does not exist"):
        bert_thick_thin_datalist(root, tmp_path / "nope.json", tmp_path / "bad")


# ------------------------------------------------------------------------------------ fabricated layouts
def test_covid_ct_ucsd_layout_with_meta_info_and_official_split(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "Images-processed/CT_COVID" / name)
    for name in ("n1.png", "n2.jpg"):
        _png(tmp_path / "Images-processed/CT_NonCOVID" / name)
    (tmp_path / "COVID-CT-MetaInfo.csv").write_text("File name,Patient ID\na.png,Patient 1\nb.png,Patient 1\n")
    (tmp_path / "Data-split/COVID").mkdir(parents=True)
    (tmp_path / "Data-split/COVID/testCT_COVID.txt").write_text("c.png\n")
    records = {Path(r["image"]).name: r for r in build_records("covid_ct_ucsd", tmp_path)}
    assert {k: r["label"] for k, r in records.items()} == {"a.png": 1, "b.png": 1, "c.png": 1, "n1.png": 0, "n2.jpg": 0}
    assert records["a.png"]["patient_id"] == records["b.png"]["patient_id"] == "COVID:Patient 1"
    assert "patient_id" not in records["c.png"] and records["c.png"]["source_split"] == "test"
    for f in (tmp_path / "Images-processed/CT_NonCOVID").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=f"class folder {tmp_path / 'Images-processed' / 'CT_NonCOVID'} holds no"):
        build_records("covid_ct_ucsd", tmp_path)
    (tmp_path / "Images-processed/CT_NonCOVID").rmdir()
    with pytest.raises(DatasetError, match=f"sub-folder {tmp_path / 'Images-processed' / 'CT_NonCOVID'} does not"):
        build_records("covid_ct_ucsd", tmp_path)


def test_sars_cov2_ct_and_patient_map(tmp_path: Path) -> None:
    _png(tmp_path / "COVID/Covid (1).png")
    _png(tmp_path / "COVID/Covid (2).png")
    _png(tmp_path / "non-COVID/Non-Covid (1).png")
    records = build_records("sars_cov2_ct", tmp_path)
    assert [(Path(r["image"]).name, r["label"]) for r in records] == [
        ("Non-Covid (1).png", 0),
        ("Covid (1).png", 1),
        ("Covid (2).png", 1),
    ]
    assert not any("patient_id" in r for r in records)
    (tmp_path / "map.csv").write_text("file,patient_id\nCOVID/Covid (1).png,p1\nCOVID/Covid (2).png,p1\n")
    with pytest.raises(DatasetError, match="does not list image non-COVID/Non-Covid \\(1\\).png"):
        build_records("sars_cov2_ct", tmp_path, patient_map="map.csv")
    (tmp_path / "map.csv").write_text((tmp_path / "map.csv").read_text() + "non-COVID/Non-Covid (1).png,p2\n")
    mapped = build_records("sars_cov2_ct", tmp_path, patient_map="map.csv")
    assert Counter(r["patient_id"] for r in mapped) == {"p1": 2, "p2": 1}


def _cc_ccii_tree(root: Path) -> None:
    for cls, patient, scans in (("NCP", "1032", 2), ("CP", "7", 1), ("Normal", "1500", 1), ("Normal", "1501", 1)):
        for s in range(scans):
            for k in (1, 2, 10):
                _png(root / cls / patient / f"{3000 + s}" / f"{k}.png", value=k)


def test_cc_ccii_scans_are_sorted_slice_volumes(tmp_path: Path) -> None:
    _cc_ccii_tree(tmp_path)
    records = build_records("cc_ccii", tmp_path)
    assert Counter(r["class_name"] for r in records) == {"NCP": 2, "CP": 1, "Normal": 2}
    assert Counter(r["label"] for r in records) == {2: 2, 1: 1, 0: 2}
    first = records[0]
    assert [Path(p).name for p in first["image"]] == ["1.png", "2.png", "10.png"]  # natural order
    assert first["num_slices"] == 3 and first["patient_id"] == "1500"
    out = tmp_path / "dl.json"
    build_datalist("cc_ccii", tmp_path, output=out, split="kfold", n_folds=2, pseudonymize=False)
    item = load_decathlon_datalist(out, data_list_key="training", base_dir=tmp_path)[0]
    volume = LoadMedicalImaged(keys="image")(item)["image"]
    assert tuple(volume.shape) == (1, 5, 6, 3)  # (channel, columns, rows, slices)
    assert [float(volume[0, 0, 0, k]) for k in range(3)] == [1.0, 2.0, 10.0]

    empty_scan = tmp_path / "CP" / "7" / "4000"
    empty_scan.mkdir()
    with pytest.raises(DatasetError, match=f"scan folder {empty_scan} holds no slice images"):
        build_records("cc_ccii", tmp_path)


def test_mosmeddata_binary_severity_and_masks(tmp_path: Path) -> None:
    vol = np.zeros((4, 4, 3), np.float32)
    for grade, study in ((0, "0001"), (0, "0002"), (1, "0255"), (3, "1001")):
        save_nifti(vol, np.eye(4), tmp_path / f"studies/CT-{grade}/study_{study}.nii.gz")
    save_nifti(vol, np.eye(4), tmp_path / "masks/study_0255_mask.nii.gz", dtype=np.uint8)
    binary = {r["patient_id"]: r for r in build_records("mosmeddata", tmp_path)}
    assert {k: (r["label"], r["severity"]) for k, r in binary.items()} == {
        "study_0001": (0, 0), "study_0002": (0, 0), "study_0255": (1, 1), "study_1001": (1, 3)
    }
    assert binary["study_0255"]["mask"].endswith("study_0255_mask.nii.gz") and "mask" not in binary["study_1001"]
    severity = build_records("mosmeddata", tmp_path, label_mode="severity")
    assert sorted(r["label"] for r in severity) == [0, 0, 1, 3] and severity[-1]["class_name"] == "CT-3"
    meta = build_datalist("mosmeddata", tmp_path, split="kfold", n_folds=2, label_mode="severity")["metadata"]
    assert meta["class_names"] == ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]  # all grades, present or not

    save_nifti(vol, np.eye(4), tmp_path / "studies/CT-7/study_2000.nii.gz")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'studies' / 'CT-7'}: unexpected folder"):
        build_records("mosmeddata", tmp_path)
    (tmp_path / "studies/CT-7/study_2000.nii.gz").unlink()
    (tmp_path / "studies/CT-7").rmdir()
    save_nifti(vol, np.eye(4), tmp_path / "masks/study_9999_mask.nii.gz")
    with pytest.raises(DatasetError, match="masks without a study.*study_9999"):
        build_records("mosmeddata", tmp_path)


def test_covidx_label_files(tmp_path: Path) -> None:
    _png(tmp_path / "train/a.png")
    _png(tmp_path / "train/COVID (1).png")
    _png(tmp_path / "test/c.png")
    (tmp_path / "train.txt").write_text("5 a.png pneumonia cohen\n5 COVID (1).png COVID-19 sirm\n")
    (tmp_path / "test.txt").write_text("ANON9 c.png normal\n")
    records = {Path(r["image"]).name: r for r in build_records("covidx_cxr", tmp_path)}
    assert {k: r["label"] for k, r in records.items()} == {"a.png": 1, "COVID (1).png": 2, "c.png": 0}
    assert records["a.png"]["patient_id"] == "cohen:5" and records["COVID (1).png"]["patient_id"] == "sirm:5"
    assert records["c.png"]["patient_id"] == "ANON9" and records["c.png"]["source_split"] == "test"
    (tmp_path / "test.txt").write_text("ANON9 missing.png normal\n")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'test.txt'} line 1: file .*missing.png does not exist"):
        build_records("covidx_cxr", tmp_path)
    (tmp_path / "test.txt").write_text("ANON9 c.png influenza x\n")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'test.txt'} line 1: expected"):
        build_records("covidx_cxr", tmp_path)
    # The repository's label files (COVIDx8B: positive / negative) name their image folder before "_".
    (tmp_path / "test_COVIDx8B.txt").write_text("ANON9 c.png negative rsna\n5 a.png positive cohen\n")
    _png(tmp_path / "test/a.png")
    binary = build_records("covidx_cxr", tmp_path, label_files=["test_COVIDx8B.txt"])
    assert [(r["class_name"], r["label"], r["source_split"]) for r in binary] == [
        ("negative", 0, "test"),
        ("positive", 1, "test"),
    ]


def test_kermany_folders_patients_and_leak_check(tmp_path: Path) -> None:
    _png(tmp_path / "train/NORMAL/IM-0115-0001.jpeg")
    _png(tmp_path / "train/NORMAL/NORMAL2-IM-0372-0001.jpeg")
    _png(tmp_path / "train/PNEUMONIA/person1_bacteria_1.jpeg")
    _png(tmp_path / "train/PNEUMONIA/person1_bacteria_2.jpeg")
    _png(tmp_path / "test/NORMAL/IM-0001-0001.jpeg")
    _png(tmp_path / "test/PNEUMONIA/person1_virus_6.jpeg")
    records = build_records("kermany_cxr", tmp_path)
    assert [(r["patient_id"], r["label"], r["source_split"]) for r in records] == [
        ("IM-0115", 0, "train"), ("NORMAL2-IM-0372", 0, "train"), ("person1", 1, "train"), ("person1", 1, "train"),
        ("IM-0001", 0, "test"), ("person1", 2, "test"),
    ]
    # person1 is in the official train and test folders: the predefined split must refuse it.
    with pytest.raises(DatasetError, match=f"1 patient\\(s\\) appear in more than one split: {pseudonym('person1')}"):
        build_datalist("kermany_cxr", tmp_path, split="predefined")
    datalist = build_datalist("kermany_cxr", tmp_path, split="patient", pseudonymize=False)
    _assert_disjoint(_patients_by_split(datalist))
    _png(tmp_path / "test/PNEUMONIA/scan_17.jpeg")
    with pytest.raises(DatasetError, match="scan_17.jpeg: file name does not follow"):
        build_records("kermany_cxr", tmp_path)


def test_ieee8023_metadata_filters(tmp_path: Path) -> None:
    rows = [
        ("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.png"),
        ("1", "COVID-19, ARDS", "AP Supine", "X-ray", "b.png"),
        ("2", "No Finding", "PA", "X-ray", "c.png"),
        ("3", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", "d.png"),
        ("4", "todo", "PA", "X-ray", "e.png"),
        ("5", "COVID-19", "L", "X-ray", "f.png"),
        ("6", "COVID-19", "Axial", "CT", "g.png"),
    ]
    with (tmp_path / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientid", "finding", "view", "modality", "folder", "filename"])
        writer.writerows([(p, f, v, m, "images", n) for p, f, v, m, n in rows])
    for *_, name in rows:
        _png(tmp_path / "images" / name)
    records = build_records("ieee8023_cxr", tmp_path)
    assert [(Path(r["image"]).name, r["class_name"]) for r in records] == [
        ("a.png", "COVID-19"), ("b.png", "COVID-19"), ("c.png", "normal"), ("d.png", "pneumonia_other")
    ]
    assert [Path(r["image"]).name for r in build_records("ieee8023_cxr", tmp_path, views=["PA"])] == ["a.png", "c.png"]
    (tmp_path / "images/a.png").unlink()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'metadata.csv'} line 2: file .*a.png does not exist"):
        build_records("ieee8023_cxr", tmp_path)


def test_near_duplicates_merge_patients(tmp_path: Path) -> None:
    (tmp_path / "dups.txt").write_text("# header\nx1.png\tx3.png\t0\n# cross-set: x1.png ~ other/y.png\n")
    assert read_near_duplicates(tmp_path / "dups.txt") == [("x1.png", "x3.png")]
    records = [{"patient_id": "p9"}, {"patient_id": "p2"}, {"patient_id": "p5"}, {"patient_id": "p9"}, {}]
    assert merge_groups(records, [(0, 2)]) == ["p5", "p2", "p5", "p5", "record-4"]
    (tmp_path / "bad.txt").write_text("only_one_name\n")
    with pytest.raises(DatasetError, match="bad.txt line 1"):
        read_near_duplicates(tmp_path / "bad.txt")


def test_generic_csv_and_folder(tmp_path: Path) -> None:
    for name in ("x0.png", "x1.png", "x2.png", "m0.png"):
        _png(tmp_path / "img" / name)
    (tmp_path / "table.csv").write_text(
        "path,diagnosis,mrn,mask\nimg/x0.png,covid,A,img/m0.png\nimg/x1.png,normal,A,\nimg/x2.png,covid,B,\n"
    )
    kwargs = dict(csv_path="table.csv", image_column="path", label_column="diagnosis", patient_column="mrn")
    records = build_records("csv", tmp_path, class_names=["normal", "covid"], path_columns=["mask"], **kwargs)
    assert [(r["label"], r["patient_id"]) for r in records] == [(1, "A"), (0, "A"), (1, "B")]
    assert records[0]["mask"] == str(tmp_path / "img/m0.png") and "mask" not in records[1]
    assert [r["class_name"] for r in build_records("csv", tmp_path, **kwargs)] == ["covid", "normal", "covid"]
    with pytest.raises(DatasetError, match="line 3: unknown class 'normal'"):
        build_records("csv", tmp_path, class_names=["covid", "pneumonia"], **kwargs)
    missing_column = f"manifest {tmp_path / 'table.csv'} lacks required column\\(s\\) \\['label'\\]"
    with pytest.raises(DatasetError, match=missing_column):
        build_records("csv", tmp_path, csv_path="table.csv", image_column="path")
    (tmp_path / "ints.csv").write_text("image,label\nimg/x0.png,0\nimg/x1.png,3\n")
    with pytest.raises(DatasetError, match="ints.csv line 3: label 3 is outside the class range \\[0, 1\\]"):
        build_records("csv", tmp_path, csv_path="ints.csv", class_names=["a", "b"])
    (tmp_path / "gone.csv").write_text("image,label\nimg/nothere.png,0\n")
    with pytest.raises(DatasetError, match=f"gone.csv line 2: file {tmp_path / 'img' / 'nothere.png'} does not exist"):
        build_records("csv", tmp_path, csv_path="gone.csv")

    tree = tmp_path / "tree"
    for cls, names in (("covid", ("p1_a.png", "p1_b.png", "p2_a.png")), ("normal", ("p3_a.png",))):
        for name in names:
            _png(tree / cls / name)
    folder = build_records("folder", tree, patient_pattern=r"^(?P<patient>p\d+)_")
    assert [(r["class_name"], r["label"], r["patient_id"]) for r in folder] == [
        ("covid", 0, "p1"), ("covid", 0, "p1"), ("covid", 0, "p2"), ("normal", 1, "p3")
    ]
    with pytest.raises(DatasetError, match="p1_a.png: patient_pattern"):
        build_records("folder", tree, patient_pattern=r"^(?P<patient>q\d+)_")
    (tree / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"class folder {tree / 'empty'} holds no images"):
        build_records("folder", tree)


@pytest.mark.parametrize(
    "name", ["covid_ct_ucsd", "sars_cov2_ct", "cc_ccii", "mosmeddata", "covidx_cxr", "kermany_cxr", "ieee8023_cxr"]
)
def test_missing_root_and_empty_root_name_the_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path / 'absent'} does not exist"):
        build_records(name, tmp_path / "absent")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        build_records(name, tmp_path)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    _cc_ccii_tree(tmp_path / "cc")
    for p in range(12):
        _png(tmp_path / "cc" / "CP" / f"9{p}" / "1" / "1.png")
    paths = [tmp_path / f"{n}.json" for n in ("a", "b", "c")]
    for path, seed in zip(paths, (5, 5, 6)):
        build_datalist("cc_ccii", tmp_path / "cc", output=path, seed=seed)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_split_records_rejects_unknown_modes_and_sources() -> None:
    records = [{"image": "/x/a.png", "label": 0, "patient_id": "p", "source_split": "holdout"}]
    with pytest.raises(DatasetError, match="record /x/a.png has source_split 'holdout'"):
        split_records(records, split="predefined")
    with pytest.raises(DatasetError, match="split must be 'patient', 'kfold' or 'predefined', got 'random'"):
        split_records(records, split="random")  # type: ignore[arg-type]
