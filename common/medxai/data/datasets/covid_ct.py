"""Builders for public COVID-19 chest CT datasets.

* COVID19-CT (UCSD-AI4H; Zhao et al. 2020, arXiv:2003.13865): slices cut from papers, with meta info.
* SARS-CoV-2 CT-scan dataset (Soares et al. 2020, medRxiv 2020.04.24.20078584): slices, no patient ids.
* CC-CCII (Zhang et al. 2020, Cell 181:1423): slice folders per scan, NCP / CP / Normal.
* MosMedData (Morozov et al. 2020, medRxiv 10.1101/2020.05.20.20100362): NIfTI volumes graded CT-0..CT-4.
* MedSeg 100 COVID-19 infection slices (medicalsegmentation.com, as staged in ``../shared/data``).

``docs/data.md`` gives each dataset's source, terms and caveats.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Literal

from medxai.data.datasets._records import (
    Record,
    class_index,
    list_image_files,
    make_record,
    natural_key,
    read_manifest,
    require_dir,
    require_file,
    require_records,
)
from medxai.data.datasets.registry import register_dataset
from medxai.errors import DatasetError

__all__ = [
    "UCSD_CLASSES",
    "SARS_COV2_CT_CLASSES",
    "CC_CCII_CLASSES",
    "covid_ct_ucsd",
    "covid_ct_ucsd_manifest",
    "sars_cov2_ct",
    "cc_ccii",
    "mosmeddata",
    "medseg100_manifest",
]

logger = logging.getLogger(__name__)

UCSD_CLASSES = ("NonCOVID", "COVID")
SARS_COV2_CT_CLASSES = ("non-COVID", "COVID")
CC_CCII_CLASSES = ("Normal", "CP", "NCP")
MOSMED_BINARY_CLASSES = ("normal", "COVID-19")
MOSMED_SEVERITY_CLASSES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
SLICE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _read_table(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV or Excel (``.xlsx``, needs openpyxl) table as string dicts."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            import pandas as pd

            frame = pd.read_excel(path, dtype=str).fillna("")
        except ImportError as exc:
            raise DatasetError(f"reading {path} needs openpyxl (pip install openpyxl) or a CSV copy: {exc}") from exc
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DatasetError(f"table {path} lacks required column(s) {missing}; it has {list(frame.columns)}.")
        return [{k: str(v).strip() for k, v in row.items()} for row in frame.to_dict(orient="records")]
    return read_manifest(path, required)


def _ucsd_patient_map(tables: Sequence[Path], file_column: str, patient_column: str) -> dict[str, str]:
    """Image file name -> patient id from the COVID-CT meta-info tables."""
    mapping: dict[str, str] = {}
    for table in tables:
        for row in _read_table(table, [file_column, patient_column]):
            if row[file_column] and row[patient_column]:
                mapping[Path(row[file_column]).name] = row[patient_column]
    return mapping


def _ucsd_official_splits(root: Path) -> dict[str, str]:
    """Image file name -> official split from ``Data-split/<class>/<split>CT_<class>.txt`` files, if present."""
    splits: dict[str, str] = {}
    for text in sorted((root / "Data-split").glob("*/*.txt")) if (root / "Data-split").is_dir() else []:
        match = re.match(r"(train|val|test)", text.name)
        if match is None:
            continue
        for line in text.read_text().splitlines():
            if line.strip():
                splits[Path(line.strip()).name] = match.group(1)
    return splits


@register_dataset("covid_ct_ucsd", class_names=UCSD_CLASSES)
def covid_ct_ucsd(
    root: str | PathLike,
    meta_info: str | PathLike | Sequence[str | PathLike] | None = None,
    file_column: str = "File name",
    patient_column: str = "Patient ID",
) -> list[Record]:
    """COVID19-CT (UCSD-AI4H) from its repository layout.

    Layout::

        <root>/Images-processed/CT_COVID/*.png|jpg
        <root>/Images-processed/CT_NonCOVID/*.png|jpg
        <root>/Data-split/{COVID,NonCOVID}/{train,val,test}CT_*.txt   optional: official split (source_split)
        <root>/*MetaInfo*.csv|xlsx, <root>/Data-split/*MetaInfo*.*    optional: file name -> patient id

    Patient ids are prefixed with the class folder (``COVID:Patient 1``) since the two meta tables name
    patients independently. Images that no meta table lists get no patient id (each is then its own
    patient when splitting; a warning says how many).

    Parameters
    ----------
    meta_info
        Meta-info table(s) (CSV, or XLSX with openpyxl installed); default: files matching ``*MetaInfo*``
        in ``root`` and ``root/Data-split``.
    file_column, patient_column
        Their file-name and patient-id columns.
    """
    root = require_dir(root)
    images = require_dir(root / "Images-processed", "expected sub-folder")
    if meta_info is None:
        tables = sorted(
            p
            for folder in (root, root / "Data-split")
            if folder.is_dir()
            for p in folder.glob("*MetaInfo*")
            if p.suffix.lower() in (".csv", ".xlsx", ".xls")
        )
    else:
        given = [meta_info] if isinstance(meta_info, (str, PathLike)) else list(meta_info)
        tables = [require_file(t if Path(t).is_absolute() else root / t, "meta_info") for t in given]
    patients = _ucsd_patient_map(tables, file_column, patient_column)
    splits = _ucsd_official_splits(root)
    records = []
    for label, name in enumerate(UCSD_CLASSES):
        folder = require_dir(images / f"CT_{name}", "expected sub-folder")
        files = list_image_files(folder)
        if not files:
            raise DatasetError(f"class folder {folder} holds no images.")
        for file in files:
            pid = patients.get(file.name)
            records.append(
                make_record(
                    file, label, UCSD_CLASSES, f"{name}:{pid}" if pid else None, source_split=splits.get(file.name)
                )
            )
    unknown = sum("patient_id" not in r for r in records)
    if unknown:
        logger.warning("COVID19-CT at %s: %d of %d images have no patient id.", root, unknown, len(records))
    return require_records(records, root, "COVID19-CT")


@register_dataset("covid_ct_ucsd_manifest", class_names=UCSD_CLASSES)
def covid_ct_ucsd_manifest(root: str | PathLike, manifest: str = "manifest.csv") -> list[Record]:
    """The staged COVID19-CT subset (``../shared/data/covid_ct_ucsd``).

    Layout::

        <root>/manifest.csv   columns file, label (COVID | NonCOVID), label_index, split, patient_id
        <root>/images/*.png

    ``label_index`` must agree with ``label`` (NonCOVID 0, COVID 1); ``split`` (train/val) becomes
    ``source_split``.
    """
    root = require_dir(root)
    rows = read_manifest(root / manifest, ["file", "label", "label_index", "split", "patient_id"])
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"manifest {root / manifest} line {line}"
        label = class_index(row["label"], UCSD_CLASSES, where)
        if class_index(row["label_index"], UCSD_CLASSES, where) != label:
            raise DatasetError(f"{where}: label_index {row['label_index']} disagrees with label {row['label']!r}.")
        image = require_file(root / row["file"], where)
        records.append(make_record(image, label, UCSD_CLASSES, row["patient_id"] or None, source_split=row["split"]))
    return require_records(records, root, "COVID19-CT manifest")


@register_dataset("sars_cov2_ct", class_names=SARS_COV2_CT_CLASSES, patient_ids=False)
def sars_cov2_ct(
    root: str | PathLike,
    patient_map: str | PathLike | None = None,
    file_column: str = "file",
    patient_column: str = "patient_id",
) -> list[Record]:
    """SARS-CoV-2 CT-scan dataset (Soares et al.).

    Layout::

        <root>/COVID/*.png
        <root>/non-COVID/*.png

    The public release gives **no patient ids** (about 120 patients, several slices each), so without a
    ``patient_map`` every slice is its own patient and random splits leak patients between subsets.

    Parameters
    ----------
    patient_map
        Optional CSV with ``file_column`` (path relative to ``root``, e.g. ``COVID/Covid (1).png``) and
        ``patient_column``; when given, every image must be listed.
    """
    root = require_dir(root)
    mapping: dict[str, str] | None = None
    if patient_map is not None:
        table = require_file(patient_map if Path(patient_map).is_absolute() else root / patient_map, "patient_map")
        rows = read_manifest(table, [file_column, patient_column])
        mapping = {Path(r[file_column]).as_posix(): r[patient_column] for r in rows}
    records = []
    for label, name in enumerate(SARS_COV2_CT_CLASSES):
        folder = require_dir(root / name, "expected sub-folder")
        files = list_image_files(folder)
        if not files:
            raise DatasetError(f"class folder {folder} holds no images.")
        for file in files:
            key = file.relative_to(root).as_posix()
            if mapping is not None and key not in mapping:
                raise DatasetError(f"patient_map {patient_map} does not list image {key}.")
            records.append(make_record(file, label, SARS_COV2_CT_CLASSES, mapping[key] if mapping else None))
    return require_records(records, root, "SARS-CoV-2 CT-scan dataset")


@register_dataset("cc_ccii", class_names=CC_CCII_CLASSES)
def cc_ccii(root: str | PathLike, suffixes: Sequence[str] = SLICE_SUFFIXES) -> list[Record]:
    """CC-CCII (China Consortium of Chest CT Image Investigation), one record per CT scan.

    Layout::

        <root>/{NCP,CP,Normal}/<patient_id>/<scan_id>/<slice>.png|jpg

    Labels: Normal 0, CP (common pneumonia) 1, NCP (novel coronavirus pneumonia) 2. ``image`` is the list
    of the scan's slice files in natural order (``2.png`` before ``10.png``), which
    :class:`medxai.data.io.LoadMedicalImage` stacks into a volume; ``scan_dir`` is the scan folder.
    """
    root = require_dir(root)
    records = []
    for label, name in enumerate(CC_CCII_CLASSES):
        class_dir = require_dir(root / name, "expected sub-folder")
        patients = sorted((p for p in class_dir.iterdir() if not p.name.startswith(".")), key=natural_key)
        if not patients:
            raise DatasetError(f"class folder {class_dir} holds no patient folders.")
        for patient in patients:
            if not patient.is_dir():
                raise DatasetError(f"{patient}: expected a patient folder <class>/<patient>/<scan>/<slice>.")
            for scan in sorted((s for s in patient.iterdir() if not s.name.startswith(".")), key=natural_key):
                if not scan.is_dir():
                    raise DatasetError(f"{scan}: expected a scan folder <class>/<patient>/<scan>/<slice>.")
                slices = list_image_files(scan, tuple(suffixes))
                if not slices:
                    raise DatasetError(f"scan folder {scan} holds no slice images ({', '.join(suffixes)}).")
                extras = {"scan_id": scan.name, "scan_dir": str(scan), "num_slices": len(slices)}
                records.append(make_record(slices, label, CC_CCII_CLASSES, patient.name, **extras))
    return require_records(records, root, "CC-CCII")


@register_dataset(
    "mosmeddata",
    class_names=lambda kw: MOSMED_SEVERITY_CLASSES if kw.get("label_mode") == "severity" else MOSMED_BINARY_CLASSES,
)
def mosmeddata(root: str | PathLike, label_mode: Literal["binary", "severity"] = "binary") -> list[Record]:
    """MosMedData COVID19_1110 chest CT volumes.

    Layout::

        <root>/studies/CT-0/study_0001.nii.gz ... CT-4/...
        <root>/masks/study_0255_mask.nii.gz        optional lesion masks (part of CT-1)

    ``severity`` is the CT-k grade (0 no findings, 1..4 increasing lung involvement: <25 %, 25-50 %,
    50-75 %, >75 %). ``label_mode="binary"``: normal (CT-0) 0 vs COVID-19 (CT-1..4) 1;
    ``"severity"``: label = grade, classes CT-0..CT-4. One study per patient, so the study id is the
    patient id. A mask whose study is not among the studies is an error.
    """
    if label_mode not in ("binary", "severity"):
        raise DatasetError(f"label_mode must be 'binary' or 'severity', got {label_mode!r}.")
    root = require_dir(root)
    studies = require_dir(root / "studies", "expected sub-folder")
    grades = sorted(p for p in studies.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not grades:
        raise DatasetError(f"{studies} holds no CT-0..CT-4 folders.")
    masks_dir = root / "masks"
    masks = {
        re.sub(r"_mask$", "", f.name.split(".nii")[0]): f
        for f in (list_image_files(masks_dir, (".nii", ".nii.gz")) if masks_dir.is_dir() else [])
    }
    names = MOSMED_BINARY_CLASSES if label_mode == "binary" else MOSMED_SEVERITY_CLASSES
    records = []
    for grade_dir in grades:
        match = re.fullmatch(r"CT-(\d+)", grade_dir.name)
        if match is None or int(match.group(1)) >= len(MOSMED_SEVERITY_CLASSES):
            raise DatasetError(f"{grade_dir}: unexpected folder; severity folders are CT-0 .. CT-4.")
        severity = int(match.group(1))
        volumes = list_image_files(grade_dir, (".nii", ".nii.gz"))
        if not volumes:
            raise DatasetError(f"severity folder {grade_dir} holds no NIfTI studies.")
        for volume in volumes:
            study = volume.name.split(".nii")[0]
            mask = masks.pop(study, None)
            label = min(severity, 1) if label_mode == "binary" else severity
            records.append(
                make_record(volume, label, names, study, severity=severity, mask=str(mask) if mask else None)
            )
    if masks:
        raise DatasetError(f"{masks_dir}: masks without a study under {studies}: {sorted(masks)[:5]}.")
    return require_records(records, root, "MosMedData")


@register_dataset(
    "medseg100_manifest", task="segmentation", class_names=("COVID",), stratify_key="class_name", patient_ids=False
)
def medseg100_manifest(root: str | PathLike, manifest: str = "manifest.csv") -> list[Record]:
    """MedSeg 100 COVID-19 CT slices with infection masks (``../shared/data/covid_ct_infection_seg_medseg100``).

    Layout::

        <root>/manifest.csv   columns image, infection_mask, multiclass_mask, split, label
        <root>/train/images/slice_XXX.png, train/infection_mask/..., train/multiclass_mask/...

    A segmentation set: ``label`` is the binary infection mask path (MONAI's convention), also under
    ``infection_mask``; ``multiclass_mask`` holds 0 background, 1 ground-glass, 2 consolidation. The slices
    come from about 40 patients but **no patient ids** are given.
    """
    root = require_dir(root)
    path = root / manifest
    rows = read_manifest(path, ["image", "infection_mask", "multiclass_mask", "split", "label"])
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"manifest {path} line {line}"
        class_index(row["label"], ("COVID",), where)
        infection = str(require_file(root / row["infection_mask"], where))
        record: Record = {
            "image": str(require_file(root / row["image"], where)),
            "label": infection,
            "infection_mask": infection,
            "multiclass_mask": str(require_file(root / row["multiclass_mask"], where)),
            "class_name": row["label"],
            "source_split": row["split"],
        }
        if row.get("infection_fraction"):
            record["infection_fraction"] = float(row["infection_fraction"])
        records.append(record)
    return require_records(records, root, "MedSeg 100 manifest")
