"""CXRNet's four-class CXR set (``cxrnet_four_class``) from the staged ieee8023 and Kermany subsets.

The finding -> class mapping is checked on hand-picked findings; the builder on a fabricated pair of
manifests in ``tmp_path`` and on the real staged sets in ``../shared/data`` (skipped when absent), where
expected counts come from the manifests read here with ``csv`` and a hand-written table of the findings.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from medxai import cli
from medxai.data.datasets import (
    CXRNET_CLASSES,
    build_datalist,
    build_records,
    cxrnet_finding_class,
    get_dataset_spec,
)
from medxai.data.splits import check_patient_disjoint
from medxai.data.synthetic.cxr import CXR_CLASS_NAMES
from medxai.data.synthetic.io import save_png
from medxai.errors import DatasetError

IEEE = "cxr_ieee8023_lungmasks"
KERMANY = "cxr_kermany_skytells_val"
SUBSETS = ("training", "validation", "test")

# Hand-written reading of every finding in the staged ieee8023 manifest (None: not one of the four).
STAGED_FINDINGS = {
    "COVID-19": "covid19",
    "COVID-19, ARDS": "covid19",
    "No Finding": "normal",
    "Klebsiella": "bacterial",
    "Streptococcus": "bacterial",
    "Mycoplasma Bacterial Pneumonia": "bacterial",
    "E.Coli": "bacterial",
    "Legionella": "bacterial",
    "SARS": "viral",
    "Varicella": "viral",
    "Influenza": "viral",
    "Pneumocystis": None,
    "Lipoid": None,
    "ARDS": None,
    "Pneumonia": None,
}
KERMANY_NAMES = {"normal": "normal", "pneumonia_bacterial": "bacterial", "pneumonia_viral": "viral"}
FRONTAL = {"PA", "AP", "AP Supine", "AP semi erect", "AP erect"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _near_duplicate_pairs(path: Path) -> list[tuple[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [tuple(line.split("\t")[:2]) for line in lines]  # type: ignore[misc]


def _split_of(datalist: dict) -> dict[str, str]:
    return {Path(r["image"]).name: name for name in SUBSETS for r in datalist.get(name, [])}


# ------------------------------------------------------------------------------------------ class mapping
@pytest.mark.parametrize(
    "finding, expected",
    [
        ("No Finding", "normal"),
        ("no finding", "normal"),
        ("COVID-19", "covid19"),
        ("COVID-19, ARDS", "covid19"),
        ("Pneumonia/Viral/COVID-19", "covid19"),
        ("SARS-CoV-2", "covid19"),
        ("Klebsiella", "bacterial"),
        ("Streptococcus", "bacterial"),
        ("Mycoplasma Bacterial Pneumonia", "bacterial"),
        ("E.Coli", "bacterial"),
        ("Legionella", "bacterial"),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", "bacterial"),
        ("Pneumonia/Bacterial/Chlamydophila", "bacterial"),
        ("Pneumonia/Bacterial/Nocardia", "bacterial"),
        ("Pneumonia/Bacterial", "bacterial"),
        ("SARS", "viral"),
        ("MERS-CoV", "viral"),
        ("Pneumonia/Viral/SARS", "viral"),
        ("Pneumonia/Viral/Influenza/H1N1", "viral"),
        ("Pneumonia/Viral/Herpes ", "viral"),
        ("Varicella", "viral"),
        ("Pneumocystis", None),
        ("Pneumonia/Fungal/Pneumocystis", None),
        ("Pneumonia/Fungal/Aspergillosis", None),
        ("Lipoid", None),
        ("Pneumonia/Lipoid", None),
        ("Pneumonia/Aspiration", None),
        ("ARDS", None),
        ("Pneumonia", None),
        ("Tuberculosis", None),
        ("Pneumonia/Bacterial/Mycobacterium tuberculosis", None),
        ("Streptococcus, Influenza", None),  # co-infection: neither class
        ("Chronic eosinophilic pneumonia", None),
        ("todo", None),
        ("Unknown", None),
        ("", None),
    ],
)
def test_finding_class(finding: str, expected: str | None) -> None:
    assert cxrnet_finding_class(finding) == expected


def test_class_names_are_cxrnet_classes() -> None:
    assert CXRNET_CLASSES == CXR_CLASS_NAMES == ("normal", "bacterial", "viral", "covid19")
    spec = get_dataset_spec("cxrnet_four_class")
    assert spec.resolve_class_names({}) == list(CXR_CLASS_NAMES)
    assert (spec.group_key, spec.patient_ids) == ("split_group", False)


# --------------------------------------------------------------------------------------- fabricated sets
IEEE_COLUMNS = ["file", "finding", "label", "patient_id", "view", "lung_mask_v7", "lung_lr_mask_gb", "lesion_mask_gb"]
IEEE_ROWS = [  # file, finding, label, patient, view, has lung mask
    ("a.png", "COVID-19", "COVID-19", "1", "PA", True),
    ("b.png", "COVID-19, ARDS", "COVID-19", "1", "AP", False),
    ("c.png", "Klebsiella", "pneumonia_other", "2", "PA", True),
    ("d.png", "Pneumocystis", "pneumonia_other", "3", "PA", False),
    ("e.png", "No Finding", "normal", "4", "AP Supine", False),
    ("f.png", "SARS", "pneumonia_other", "5", "L", False),
    ("g.png", "Varicella", "pneumonia_other", "6", "PA", False),
]
KERMANY_ROWS = [
    ("normal_1.png", "normal"),
    ("bacterial_2.png", "pneumonia_bacterial"),
    ("viral_3.png", "pneumonia_viral"),
]


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fabricate(root: Path, ieee_rows: list[tuple] = IEEE_ROWS) -> Path:
    """Two tiny staged sets under ``root``: 7 ieee8023 images (c and g near-duplicates), 3 Kermany images."""
    rows = []
    for i, (name, finding, label, patient, view, has_mask) in enumerate(ieee_rows):
        save_png(np.full((6, 5), 10 * i, dtype=np.uint8), root / IEEE / "images" / name)
        mask = ""
        if has_mask:
            mask = f"lung_mask_v7/{name}"
            save_png(np.eye(6, 5, dtype=np.uint8), root / IEEE / mask)
        cells = [f"images/{name}", finding, label, patient, view, mask, "", ""]
        rows.append(dict(zip(IEEE_COLUMNS, cells)))
    _write_csv(root / IEEE / "manifest.csv", IEEE_COLUMNS, rows)
    (root / IEEE / "near_duplicates.txt").write_text("# pairs\nc.png\tg.png\t3\n")
    for i, (name, label) in enumerate(KERMANY_ROWS):
        save_png(np.full((5, 6), 50 + i, dtype=np.uint8), root / KERMANY / "images" / name)
    kermany_rows = [{"file": f"images/{name}", "label": label} for name, label in KERMANY_ROWS]
    _write_csv(root / KERMANY / "manifest.csv", ["file", "label"], kermany_rows)
    return root


def test_fabricated_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _fabricate(tmp_path)
    with caplog.at_level(logging.INFO, logger="medxai.data.datasets.cxr"):
        records = build_records("cxrnet_four_class", root)
    summary = [
        (Path(r["image"]).name, r["label"], r["class_name"], r["patient_id"], r["source"], r["split_group"])
        for r in records
    ]
    assert summary == [
        ("a.png", 3, "covid19", "ieee8023:1", "ieee8023", "ieee8023:1"),
        ("b.png", 3, "covid19", "ieee8023:1", "ieee8023", "ieee8023:1"),
        ("c.png", 1, "bacterial", "ieee8023:2", "ieee8023", "ieee8023:2"),  # near-duplicate of g.png
        ("e.png", 0, "normal", "ieee8023:4", "ieee8023", "ieee8023:4"),  # "AP Supine" is frontal
        ("g.png", 2, "viral", "ieee8023:6", "ieee8023", "ieee8023:2"),
        ("normal_1.png", 0, "normal", "kermany:normal_1", "kermany", "kermany:normal_1"),
        ("bacterial_2.png", 1, "bacterial", "kermany:bacterial_2", "kermany", "kermany:bacterial_2"),
        ("viral_3.png", 2, "viral", "kermany:viral_3", "kermany", "kermany:viral_3"),
    ]
    with_mask = {Path(r["image"]).name: r["lung_mask"] for r in records if "lung_mask" in r}
    assert with_mask == {n: str(root / IEEE / "lung_mask_v7" / n) for n in ("a.png", "c.png")}
    assert all(Path(r["image"]).is_file() for r in records)
    assert "excluded 1 ieee8023 images by finding {'Pneumocystis': 1}" in caplog.text
    assert "kept 8 images" in caplog.text

    # views: a single string is one view (as fire passes it); None keeps the lateral SARS image too.
    pa_only = build_records("cxrnet_four_class", root, views="PA")
    assert [Path(r["image"]).name for r in pa_only if r["source"] == "ieee8023"] == ["a.png", "c.png", "g.png"]
    everything = build_records("cxrnet_four_class", root, views=None)
    ieee = [(Path(r["image"]).name, r["class_name"]) for r in everything if r["source"] == "ieee8023"]
    assert ieee[-2:] == [("f.png", "viral"), ("g.png", "viral")] and len(ieee) == 6


def test_fabricated_datalist_keeps_near_duplicates_together(tmp_path: Path) -> None:
    root = _fabricate(tmp_path)
    for seed in range(6):
        datalist = build_datalist(
            "cxrnet_four_class", root, fractions={"training": 0.5, "test": 0.5}, seed=seed, pseudonymize=False
        )
        split = _split_of(datalist)
        assert split["c.png"] == split["g.png"] and split["a.png"] == split["b.png"]
        assert sum(len(datalist[n]) for n in ("training", "test")) == 8
    assert datalist["metadata"]["class_names"] == list(CXR_CLASS_NAMES)
    assert datalist["metadata"]["group_key"] == "split_group"
    images = [r["image"] for name in ("training", "test") for r in datalist[name]]
    assert all(image.startswith((f"{IEEE}/images/", f"{KERMANY}/images/")) for image in images)


def test_fabricated_errors(tmp_path: Path) -> None:
    # A finding the four-class mapping reads as COVID-19 but the manifest labels otherwise.
    bad = [("a.png", "COVID-19", "pneumonia_other", "1", "PA", False)]
    root = _fabricate(tmp_path / "bad", bad)
    with pytest.raises(DatasetError, match=r"a\.png: finding 'COVID-19' maps to CXRNet class 'covid19', but"):
        build_records("cxrnet_four_class", root)
    root = _fabricate(tmp_path / "good")
    with pytest.raises(DatasetError, match=r"Kermany folder .*missing_kermany does not exist"):
        build_records("cxrnet_four_class", root, kermany_dir="missing_kermany")


# ------------------------------------------------------------------------------------- real staged sets
@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[Path, list[dict], list[dict[str, str]], list[dict[str, str]]]:
    ieee_rows, kermany_rows = _rows(shared_data / IEEE / "manifest.csv"), _rows(shared_data / KERMANY / "manifest.csv")
    unknown = {row["finding"] for row in ieee_rows} - set(STAGED_FINDINGS)
    assert not unknown, f"new findings in the staged manifest; classify them in STAGED_FINDINGS: {unknown}"
    return shared_data, build_records("cxrnet_four_class", shared_data), ieee_rows, kermany_rows


def test_real_counts_match_the_manifests(real: tuple, caplog: pytest.LogCaptureFixture) -> None:
    root, records, ieee_rows, kermany_rows = real
    kept = [row for row in ieee_rows if row["view"] in FRONTAL and STAGED_FINDINGS[row["finding"]]]
    expected = Counter(("ieee8023", STAGED_FINDINGS[row["finding"]]) for row in kept)
    expected.update(("kermany", KERMANY_NAMES[row["label"]]) for row in kermany_rows)
    assert Counter((r["source"], r["class_name"]) for r in records) == expected
    assert all(r["label"] == CXR_CLASS_NAMES.index(r["class_name"]) for r in records)
    assert len(records) == len(kept) + len(kermany_rows)
    n_excluded = sum(row["view"] in FRONTAL and STAGED_FINDINGS[row["finding"]] is None for row in ieee_rows)
    with caplog.at_level(logging.INFO, logger="medxai.data.datasets.cxr"):
        build_records("cxrnet_four_class", root)
    assert f"excluded {n_excluded} ieee8023 images" in caplog.text


def test_real_sources_labels_patients_and_masks(real: tuple) -> None:
    root, records, ieee_rows, kermany_rows = real
    assert {r["source"] for r in records if r["class_name"] == "covid19"} == {"ieee8023"}
    kermany_label = {str(root / KERMANY / row["file"]): KERMANY_NAMES[row["label"]] for row in kermany_rows}
    kermany = [r for r in records if r["source"] == "kermany"]
    assert {r["image"]: r["class_name"] for r in kermany} == kermany_label
    assert all(r["patient_id"] == r["split_group"] == f"kermany:{Path(r['image']).stem}" for r in kermany)
    assert len({r["patient_id"] for r in kermany}) == len(kermany)

    by_image = {str(root / IEEE / row["file"]): row for row in ieee_rows}
    ieee = [r for r in records if r["source"] == "ieee8023"]
    assert all(r["patient_id"] == f"ieee8023:{by_image[r['image']]['patient_id']}" for r in ieee)
    assert all(r["split_group"].startswith("ieee8023:") for r in ieee)
    masks = {r["image"]: r["lung_mask"] for r in records if "lung_mask" in r}
    expected = {img: str(root / IEEE / row["lung_mask_v7"]) for img, row in by_image.items() if row["lung_mask_v7"]}
    assert masks == {img: path for img, path in expected.items() if img in {r["image"] for r in ieee}}
    assert masks and all(Path(path).is_file() for path in masks.values())


def test_real_cli_datalist_is_patient_disjoint(
    real: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root, records, ieee_rows, _ = real
    output = tmp_path / "cxrnet.json"
    argv = ["medxai", "datalist", "cxrnet_four_class", str(root), "--output", str(output), "--pseudonymize=False"]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    assert f"wrote {output}" in capsys.readouterr().out
    datalist = json.loads(output.read_text())
    assert datalist["metadata"]["class_names"] == list(CXR_CLASS_NAMES)
    assert sum(len(datalist[n]) for n in SUBSETS) == len(records)
    assert {r["class_name"] for r in datalist["training"]} == set(CXR_CLASS_NAMES)
    check_patient_disjoint({n: datalist[n] for n in SUBSETS}, "patient_id")
    check_patient_disjoint({n: datalist[n] for n in SUBSETS}, "split_group")
    loaded = load_decathlon_datalist(output, data_list_key="test", base_dir=root)
    assert all(Path(item["image"]).is_file() for item in loaded)

    patient_of = {Path(row["file"]).name: row["patient_id"] for row in ieee_rows}
    kept = {Path(r["image"]).name for r in records}
    pairs = [(a, b) for a, b in _near_duplicate_pairs(root / IEEE / "near_duplicates.txt") if {a, b} <= kept]
    assert pairs and any(patient_of[a] != patient_of[b] for a, b in pairs)  # some pairs cross patients
    for seed in range(3):
        content = build_datalist("cxrnet_four_class", root, seed=seed, pseudonymize=False) if seed else datalist
        split = _split_of(content)
        assert all(split[a] == split[b] for a, b in pairs)
        check_patient_disjoint({n: content[n] for n in SUBSETS}, "patient_id")
