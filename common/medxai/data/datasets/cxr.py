"""Builders for public chest X-ray datasets.

* COVIDx CXR (Wang et al. 2020, COVID-Net, Sci. Rep. 10:19549): label files ``train.txt`` / ``test.txt``.
* Kermany pediatric CXR (Kermany et al. 2018, Cell 172:1122; Mendeley rscbjbr9sj): NORMAL / PNEUMONIA.
* ieee8023 covid-chestxray-dataset (Cohen et al. 2020, arXiv:2006.11988): ``metadata.csv``.
* The staged subsets of Kermany and ieee8023 (with lung and lesion masks) in ``../shared/data``.

``docs/data.md`` gives each dataset's source, terms and caveats.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from medxai.data.datasets._records import (
    Record,
    class_index,
    list_image_files,
    make_record,
    merge_groups,
    read_manifest,
    require_dir,
    require_file,
    require_records,
)
from medxai.data.datasets.registry import register_dataset
from medxai.errors import DatasetError

__all__ = [
    "COVIDX_BINARY_CLASSES",
    "COVIDX_THREE_CLASSES",
    "KERMANY_CLASSES",
    "IEEE8023_CLASSES",
    "FRONTAL_VIEWS",
    "covidx_cxr",
    "kermany_cxr",
    "kermany_cxr_manifest",
    "ieee8023_cxr",
    "ieee8023_cxr_manifest",
    "ieee8023_label",
    "read_near_duplicates",
]

logger = logging.getLogger(__name__)

COVIDX_BINARY_CLASSES = ("negative", "positive")
COVIDX_THREE_CLASSES = ("normal", "pneumonia", "COVID-19")
KERMANY_CLASSES = ("normal", "pneumonia_bacterial", "pneumonia_viral")
KERMANY_BINARY_CLASSES = ("normal", "pneumonia")
IEEE8023_CLASSES = ("normal", "pneumonia_other", "COVID-19")
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")


# ----------------------------------------------------------------------------------------------- COVIDx
def _parse_covidx_line(line: str, where: str) -> tuple[str, str, str, str | None]:
    """``patient_id filename class [source]`` -> fields; file names may contain spaces."""
    tokens = line.split()
    vocabulary = set(COVIDX_BINARY_CLASSES) | set(COVIDX_THREE_CLASSES)
    if len(tokens) >= 4 and tokens[-2] in vocabulary:
        return tokens[0], " ".join(tokens[1:-2]), tokens[-2], tokens[-1]
    if len(tokens) >= 3 and tokens[-1] in vocabulary:
        return tokens[0], " ".join(tokens[1:-1]), tokens[-1], None
    raise DatasetError(f"{where}: expected 'patient_id filename class [source]' with class in {sorted(vocabulary)}.")


@register_dataset("covidx_cxr")
def covidx_cxr(root: str | PathLike, label_files: Sequence[str] = ("train.txt", "val.txt", "test.txt")) -> list[Record]:
    """COVIDx CXR (any release) from its label files.

    Layout::

        <root>/train.txt, <root>/test.txt, <root>/val.txt (those present; at least one)
        <root>/train/<filename>, <root>/test/<filename>, <root>/val/<filename>

    ``label_files`` may name the repository's files instead (``train_COVIDx8B.txt``): the part of the
    name before the first ``_`` is the image folder and ``source_split``.
    Each line is ``patient_id filename class [data_source]``. Releases up to v5 use classes normal /
    pneumonia / COVID-19 (labels 0, 1, 2); COVIDx CXR-2 and later use negative / positive (0, 1); one
    dataset must use one vocabulary. Patient ids are prefixed
    with the data source when given (sources number their patients independently).
    """
    root = require_dir(root)
    present = [root / name for name in label_files if (root / name).is_file()]
    if not present:
        raise DatasetError(f"COVIDx root {root} has none of the label files {list(label_files)}.")
    parsed = []
    for text in present:
        split = text.stem.split("_")[0]  # "train.txt" and "train_COVIDx8B.txt" both label images in train/
        folder = require_dir(root / split, "expected sub-folder")
        for number, line in enumerate(text.read_text().splitlines(), start=1):
            if line.strip():
                where = f"{text} line {number}"
                parsed.append((where, folder, split, *_parse_covidx_line(line, where)))
    classes = {p[5] for p in parsed}
    names = COVIDX_BINARY_CLASSES if classes <= set(COVIDX_BINARY_CLASSES) else COVIDX_THREE_CLASSES
    records = []
    for where, folder, split, patient, filename, label, source in parsed:
        image = require_file(folder / filename, where)
        pid = f"{source}:{patient}" if source else patient
        label_index = class_index(label, names, where)
        records.append(make_record(image, label_index, names, pid, source=source, source_split=split))
    return require_records(records, root, "COVIDx")


# ---------------------------------------------------------------------------------------------- Kermany
_KERMANY_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_KERMANY_NORMAL = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)


def _kermany_names(label_mode: str) -> tuple[str, ...]:
    if label_mode not in ("three_class", "binary"):
        raise DatasetError(f"label_mode must be 'three_class' or 'binary', got {label_mode!r}.")
    return KERMANY_CLASSES if label_mode == "three_class" else KERMANY_BINARY_CLASSES


def _kermany_spec_names(kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    return KERMANY_BINARY_CLASSES if kwargs.get("label_mode") == "binary" else KERMANY_CLASSES


@register_dataset("kermany_cxr", class_names=_kermany_spec_names)
def kermany_cxr(
    root: str | PathLike,
    label_mode: Literal["three_class", "binary"] = "three_class",
    splits: Sequence[str] = ("train", "val", "test"),
) -> list[Record]:
    """Kermany pediatric chest X-rays (ChestXRay2017).

    Layout::

        <root>/{train,val,test}/NORMAL/IM-0115-0001.jpeg, NORMAL2-IM-0372-0001.jpeg
        <root>/{train,val,test}/PNEUMONIA/person1_bacteria_1.jpeg, person1_virus_6.jpeg

    The file name gives the patient (``person1``; ``IM-0115`` / ``NORMAL2-IM-0372`` for normal images) and,
    for pneumonia, the cause. ``label_mode="three_class"``: normal 0, bacterial 1, viral 2; ``"binary"``:
    normal 0, pneumonia 1. The split folder is ``source_split``. A file name that does not follow the
    pattern is an error (it could not be assigned a patient).
    """
    names = _kermany_names(label_mode)
    root = require_dir(root)
    split_dirs = [root / s for s in splits if (root / s).is_dir()]
    if not split_dirs:
        raise DatasetError(f"Kermany root {root} has none of the split folders {list(splits)}.")
    records = []
    for split_dir in split_dirs:
        for class_folder in ("NORMAL", "PNEUMONIA"):
            folder = require_dir(split_dir / class_folder, "expected sub-folder")
            files = list_image_files(folder)
            if not files:
                raise DatasetError(f"class folder {folder} holds no images.")
            for file in files:
                pattern = _KERMANY_NORMAL if class_folder == "NORMAL" else _KERMANY_PNEUMONIA
                match = pattern.match(file.name)
                if match is None:
                    raise DatasetError(f"{file}: file name does not follow the pattern {pattern.pattern!r}.")
                if class_folder == "NORMAL":
                    label = 0
                else:
                    label = 1 if label_mode == "binary" else (1 if match.group(2).lower() == "bacteria" else 2)
                records.append(make_record(file, label, names, match.group(1), source_split=split_dir.name))
    return require_records(records, root, "Kermany CXR")


@register_dataset("kermany_cxr_manifest", class_names=_kermany_spec_names, patient_ids=False)
def kermany_cxr_manifest(
    root: str | PathLike, label_mode: Literal["three_class", "binary"] = "three_class", manifest: str = "manifest.csv"
) -> list[Record]:
    """The staged Kermany subset (``../shared/data/cxr_kermany_skytells_val``).

    Layout::

        <root>/manifest.csv   columns file, label (normal | pneumonia_bacterial | pneumonia_viral)
        <root>/images/*.png

    The files were renamed upstream, so there are **no patient ids**: each image is its own patient.
    """
    names = _kermany_names(label_mode)
    root = require_dir(root)
    path = root / manifest
    records = []
    for line, row in enumerate(read_manifest(path, ["file", "label"]), start=2):
        where = f"manifest {path} line {line}"
        label = class_index(row["label"], KERMANY_CLASSES, where)
        label = min(label, 1) if label_mode == "binary" else label
        records.append(make_record(require_file(root / row["file"], where), label, names))
    return require_records(records, root, "Kermany manifest")


# ---------------------------------------------------------------------------------------------- ieee8023
def ieee8023_label(finding: str) -> str | None:
    """Class of an ieee8023 ``finding``: COVID-19, normal ("No Finding"), pneumonia_other; ``None`` to exclude.

    Works with both metadata versions: flat (``COVID-19, ARDS``) and hierarchical
    (``Pneumonia/Viral/COVID-19``). Findings "todo" and "Unknown" (not yet labelled) are excluded.
    """
    text = finding.strip()
    if text.lower() in ("", "todo", "unknown"):
        return None
    parts = [p.strip() for p in re.split(r"[/,]", text)]
    if "COVID-19" in parts:
        return "COVID-19"
    if text.lower() == "no finding":
        return "normal"
    return "pneumonia_other"


def _check_views(views: Sequence[str] | None) -> set[str] | None:
    if isinstance(views, str):
        raise DatasetError(f"views must be a list of view names, got the string {views!r}.")
    return None if views is None else set(views)


@register_dataset("ieee8023_cxr", class_names=IEEE8023_CLASSES)
def ieee8023_cxr(
    root: str | PathLike, views: Sequence[str] | None = FRONTAL_VIEWS, modality: str | None = "X-ray"
) -> list[Record]:
    """ieee8023 covid-chestxray-dataset from its ``metadata.csv``.

    Layout::

        <root>/metadata.csv    columns patientid, finding, view, filename, folder (default "images"),
                               modality (optional)
        <root>/<folder>/<filename>

    Rows are kept when ``modality`` matches (the set also holds CT) and ``view`` is in ``views`` (default
    the frontal views; ``("PA",)`` for PA only, ``None`` for all); rows with finding "todo"/"Unknown" are
    dropped. The log says how many rows each filter removed.
    """
    root = require_dir(root)
    path = root / "metadata.csv"
    allowed = _check_views(views)
    rows = read_manifest(path, ["patientid", "finding", "view", "filename"])
    records, dropped = [], Counter()
    for line, row in enumerate(rows, start=2):
        where = f"manifest {path} line {line}"
        if modality is not None and row.get("modality", modality) != modality:
            dropped["modality"] += 1
            continue
        if allowed is not None and row["view"] not in allowed:
            dropped["view"] += 1
            continue
        name = ieee8023_label(row["finding"])
        if name is None:
            dropped["unlabelled finding"] += 1
            continue
        image = require_file(root / (row.get("folder") or "images") / row["filename"], where)
        label = IEEE8023_CLASSES.index(name)
        extras = {"view": row["view"], "finding": row["finding"]}
        records.append(make_record(image, label, IEEE8023_CLASSES, row["patientid"], **extras))
    logger.info("ieee8023 at %s: kept %d rows, dropped %s.", root, len(records), dict(dropped))
    return require_records(records, root, "ieee8023 covid-chestxray-dataset")


def read_near_duplicates(path: str | PathLike) -> list[tuple[str, str]]:
    """Pairs of image file names from a near-duplicate list.

    Format: one pair per line, ``name_a <TAB> name_b [<TAB> distance]``; lines starting with ``#`` are
    comments (including ``# cross-set`` notes about images of other folders).
    """
    path = Path(path)
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split("\t") if "\t" in line else line.split()
        if len(tokens) not in (2, 3):
            raise DatasetError(f"{path} line {number}: expected 'name_a<TAB>name_b[<TAB>distance]', got {line!r}.")
        pairs.append((tokens[0].strip(), tokens[1].strip()))
    return pairs


@register_dataset("ieee8023_cxr_manifest", class_names=IEEE8023_CLASSES, group_key="split_group")
def ieee8023_cxr_manifest(
    root: str | PathLike,
    views: Sequence[str] | None = None,
    require: Sequence[str] = (),
    manifest: str = "manifest.csv",
) -> list[Record]:
    """The staged ieee8023 subset with lung and lesion masks (``../shared/data/cxr_ieee8023_lungmasks``).

    Layout::

        <root>/manifest.csv          columns file, label, patient_id, view, finding, lung_mask_v7,
                                     v7_has_ignore_region, lung_lr_mask_gb, lesion_mask_gb
        <root>/images/, lung_mask_v7/, lung_lr_mask_gb/, lesion_mask_gb/
        <root>/near_duplicates.txt   optional, see :func:`read_near_duplicates`

    Records carry the masks that exist as ``lung_mask`` (V7: 0 background, 1 lung), ``lung_lr_mask``
    (1 left, 2 right lung) and ``lesion_mask`` (1 ground-glass, 2 consolidation), and ``split_group``:
    patients joined with their near-duplicate partners (:func:`medxai.data.datasets._records.merge_groups`),
    the default grouping of :func:`build_datalist`, so near-duplicates never straddle splits. Pairs naming
    an image outside the kept records are ignored (it cannot leak).

    Parameters
    ----------
    views
        Keep only these views (e.g. ``("PA",)``); ``None`` keeps all.
    require
        Keep only records that have these mask keys (e.g. ``("lung_mask",)`` for lung segmentation).
    """
    root = require_dir(root)
    path = root / manifest
    allowed = _check_views(views)
    masks = {"lung_mask": "lung_mask_v7", "lung_lr_mask": "lung_lr_mask_gb", "lesion_mask": "lesion_mask_gb"}
    require = (require,) if isinstance(require, str) else tuple(require)  # one key, as fire passes it
    unknown = [k for k in require if k not in masks]
    if unknown:
        raise DatasetError(f"require names unknown mask key(s) {unknown}; choose from {list(masks)}.")
    rows = read_manifest(path, ["file", "label", "patient_id", "view", "finding", *masks.values()])
    records, dropped = [], Counter()
    for line, row in enumerate(rows, start=2):
        where = f"manifest {path} line {line}"
        if allowed is not None and row["view"] not in allowed:
            dropped["view"] += 1
            continue
        label = class_index(row["label"], IEEE8023_CLASSES, where)
        extras: dict[str, object] = {"view": row["view"], "finding": row["finding"]}
        extras.update({k: str(require_file(root / row[c], where)) for k, c in masks.items() if row[c]})
        if "lung_mask" in extras and row.get("v7_has_ignore_region"):
            extras["lung_mask_ignore_region"] = float(row["v7_has_ignore_region"]) > 0
        if any(k not in extras for k in require):
            dropped["missing required mask"] += 1
            continue
        image = require_file(root / row["file"], where)
        records.append(make_record(image, label, IEEE8023_CLASSES, row["patient_id"], **extras))
    logger.info("ieee8023 manifest at %s: kept %d rows, dropped %s.", root, len(records), dict(dropped))
    records = require_records(records, root, "ieee8023 manifest")
    index = {Path(r["image"]).name: i for i, r in enumerate(records)}
    pairs = read_near_duplicates(root / "near_duplicates.txt") if (root / "near_duplicates.txt").is_file() else []
    linked = [(index[a], index[b]) for a, b in pairs if a in index and b in index]
    for record, group in zip(records, merge_groups(records, linked)):
        record["split_group"] = group
    return records
