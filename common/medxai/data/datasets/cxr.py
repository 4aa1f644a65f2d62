"""Builders for public chest X-ray datasets.

* COVIDx CXR (Wang et al. 2020, COVID-Net, Sci. Rep. 10:19549): label files ``train.txt`` / ``test.txt``.
* Kermany pediatric CXR (Kermany et al. 2018, Cell 172:1122; Mendeley rscbjbr9sj): NORMAL / PNEUMONIA.
* ieee8023 covid-chestxray-dataset (Cohen et al. 2020, arXiv:2006.11988): ``metadata.csv``.
* The staged subsets of Kermany and ieee8023 (with lung and lesion masks) in ``../shared/data``.
* CXRNet's four classes (normal / bacterial / viral / COVID-19; Zhang et al., seed 001) from those two
  staged subsets together (:func:`cxrnet_four_class`).
* DeepCOVIDExplainer's three classes (normal / pneumonia / COVID-19; Karim et al., seed 002) from the
  same two subsets (:func:`deepcovid_three_class`).

``docs/data.md`` gives each dataset's source, terms and caveats.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
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
from medxai.data.synthetic.cxr import CXR_CLASS_NAMES
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
    "CXRNET_CLASSES",
    "cxrnet_finding_class",
    "cxrnet_four_class",
    "DEEPCOVID_CLASSES",
    "deepcovid_three_class",
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


# ------------------------------------------------------------------------------- CXRNet four classes
CXRNET_CLASSES: tuple[str, ...] = CXR_CLASS_NAMES
"""CXRNet's classes (seed 001, Sec. IV-A): ``("normal", "bacterial", "viral", "covid19")``; index = label."""

_COVID = re.compile(r"covid|sars-?cov-?2", re.IGNORECASE)
_NOT_IN_FOUR_CLASSES = re.compile(
    r"\b(tuberculosis|mycobacteri\w*|fungal|pneumocystis|pcp|aspergill\w*|candida\w*|cryptococc\w*|"
    r"histoplasm\w*|lipoid|aspiration)\b",
    re.IGNORECASE,
)
_BACTERIAL = re.compile(
    r"\b(bacteria\w*|klebsiella|streptococc\w*|staphylococc\w*|mrsa|mycoplasma|e\.?\s?coli|escherichia|"
    r"legionella|chlamydophila|chlamydia|nocardia|haemophilus|pseudomonas|moraxella)\b",
    re.IGNORECASE,
)
_VIRAL = re.compile(
    r"\b(viral|virus|sars|mers(?:-cov)?|varicella|influenza|h1n1|herpes|rsv|adenovirus|cytomegalovirus|cmv|"
    r"measles)\b",
    re.IGNORECASE,
)
_KERMANY_TO_CXRNET = {"normal": "normal", "pneumonia_bacterial": "bacterial", "pneumonia_viral": "viral"}


def cxrnet_finding_class(finding: str) -> str | None:
    """CXRNet class of an ieee8023 ``finding``, or ``None`` when it is none of the four.

    Rules, first match wins (case-insensitive, flat ``"COVID-19, ARDS"`` and hierarchical
    ``"Pneumonia/Viral/COVID-19"`` findings alike):

    1. empty, ``todo``, ``Unknown`` -> ``None`` (not labelled);
    2. mentions COVID-19 / SARS-CoV-2 -> ``"covid19"`` (also with a complication: ``"COVID-19, ARDS"``);
    3. exactly ``No Finding`` -> ``"normal"``;
    4. tuberculosis / mycobacteria, fungal (Pneumocystis, Aspergillosis, ...), lipoid or aspiration
       pneumonia -> ``None``: CXRNet's classes do not include them;
    5. a bacterial pathogen or ``Bacterial`` (Klebsiella, Streptococcus, Staphylococcus/MRSA, Mycoplasma,
       E. coli, Legionella, Chlamydophila, Nocardia, ...) -> ``"bacterial"``; a non-COVID virus or ``Viral``
       (SARS, MERS-CoV, Varicella, Influenza/H1N1, Herpes, ...) -> ``"viral"``; both at once (a
       co-infection) -> ``None``;
    6. anything else -> ``None``: ``Pneumonia`` with no cause, ``ARDS`` alone, unknown findings.

    Examples
    --------
    >>> cxrnet_finding_class("Pneumonia/Bacterial/Staphylococcus/MRSA"), cxrnet_finding_class("SARS")
    ('bacterial', 'viral')
    >>> cxrnet_finding_class("COVID-19, ARDS"), cxrnet_finding_class("Pneumocystis")
    ('covid19', None)
    """
    text = " ".join(str(finding).split())
    if text.lower() in ("", "todo", "unknown"):
        return None
    if _COVID.search(text):
        return "covid19"
    if text.lower() == "no finding":
        return "normal"
    if _NOT_IN_FOUR_CLASSES.search(text):
        return None
    bacterial, viral = bool(_BACTERIAL.search(text)), bool(_VIRAL.search(text))
    if bacterial != viral:
        return "bacterial" if bacterial else "viral"
    return None


def _check_ieee8023_label(record: Record, name: str) -> None:
    """Raise when the four-class mapping contradicts the manifest's three-class label of the same finding."""
    expected = {"covid19": "COVID-19", "normal": "normal"}.get(name, "pneumonia_other")
    if record["class_name"] != expected:
        raise DatasetError(
            f"{record['image']}: finding {record.get('finding')!r} maps to CXRNet class {name!r}, but the "
            f"manifest labels it {record['class_name']!r} (expected {expected!r})."
        )


def _two_source_records(
    root: str | PathLike,
    ieee8023_dir: str,
    kermany_dir: str,
    views: Sequence[str] | str | None,
    class_names: Sequence[str],
    ieee8023_class: Callable[[Record], str | None],
    kermany_class: Callable[[int], str],
) -> list[Record]:
    """Records of the staged ieee8023 and Kermany subsets under one class list (``None``: leave the image out).

    ieee8023 records keep their manifest fields and masks; ``patient_id`` and ``split_group`` get a source
    prefix (near-duplicate groups from :func:`ieee8023_cxr_manifest`); each Kermany image is its own patient.
    """
    root = require_dir(root)
    views = (views,) if isinstance(views, str) else views
    records: list[Record] = []
    for record in ieee8023_cxr_manifest(require_dir(root / ieee8023_dir, "ieee8023 folder"), views=views):
        name = ieee8023_class(record)
        if name is None:
            continue
        patient = record.get("patient_id") or Path(record["image"]).stem  # no id: the image is its own patient
        ids = {"patient_id": f"ieee8023:{patient}", "split_group": f"ieee8023:{record['split_group']}"}
        label = list(class_names).index(name)
        records.append({**record, "label": label, "class_name": name, **ids, "source": "ieee8023"})
    for record in kermany_cxr_manifest(require_dir(root / kermany_dir, "Kermany folder")):
        name = kermany_class(record["label"])
        patient = f"kermany:{Path(record['image']).stem}"
        extras = {"source": "kermany", "split_group": patient}
        records.append(make_record(record["image"], list(class_names).index(name), class_names, patient, **extras))
    return records


@register_dataset("cxrnet_four_class", class_names=CXRNET_CLASSES, group_key="split_group", patient_ids=False)
def cxrnet_four_class(
    root: str | PathLike,
    ieee8023_dir: str = "cxr_ieee8023_lungmasks",
    kermany_dir: str = "cxr_kermany_skytells_val",
    views: Sequence[str] | str | None = FRONTAL_VIEWS,
) -> list[Record]:
    """CXRNet's four classes from the staged ieee8023 and Kermany subsets together.

    .. warning::
        **The sources differ by class, so a classifier can learn the source instead of the disease.**
        Every COVID-19 image comes from ieee8023 (adults, images from many hospitals and from
        publications), while most normal, bacterial and viral images are paediatric Kermany images
        (one hospital, children aged 1-5). Image size, text markers, body habitus and age all separate the
        sources. Report per-source results, and treat high accuracy on this set as an upper bound
        that may reflect the source, not the disease. CXRNet's own data (seed 001, Sec. IV-A: 5,863 Kermany
        images plus COVID-19 images from other collections) has the same confound.

    Layout (``root`` holds both staged sets, e.g. ``../shared/data``)::

        <root>/<ieee8023_dir>/manifest.csv, images/, lung_mask_v7/, near_duplicates.txt
        <root>/<kermany_dir>/manifest.csv, images/

    Classes (:data:`CXRNET_CLASSES`; label = index): normal = Kermany normal + ieee8023 "No Finding";
    bacterial = Kermany bacterial + ieee8023 bacterial pathogens; viral = Kermany viral + ieee8023
    non-COVID viruses; covid19 = ieee8023 COVID-19. ieee8023 findings map by :func:`cxrnet_finding_class`;
    the others (fungal, lipoid, tuberculosis, ARDS alone, pneumonia of unknown cause) are excluded, and the
    log counts them by finding.

    Records: ``image``, ``label``, ``class_name``, ``patient_id`` (``"ieee8023:<patient id>"``;
    ``"kermany:<file stem>"``, as the staged Kermany files carry no patient ids: each image is its own
    patient, so Kermany splits may leak patients), ``source`` (``"ieee8023"`` or ``"kermany"``) and
    ``split_group``, the registered group key: ieee8023 patients joined with their near-duplicate partners
    (from :func:`ieee8023_cxr_manifest`), so near-duplicates stay in one split. ieee8023 records also carry
    ``view``, ``finding`` and the masks :func:`ieee8023_cxr_manifest` gives: ``lung_mask`` (V7 lungs,
    0 background, 1 lung) where the manifest has ``lung_mask_v7``, ``lung_lr_mask``, ``lesion_mask``.

    Parameters
    ----------
    root
        Folder holding both staged sets.
    ieee8023_dir, kermany_dir
        Their folder names under ``root``.
    views
        ieee8023 views to keep (default the frontal views :data:`FRONTAL_VIEWS`; a single string is one
        view, as ``medxai datalist ... --views PA`` passes it; ``None`` keeps all). Kermany images are
        all frontal.

    Example
    -------
    >>> build_datalist("cxrnet_four_class", "../shared/data", output="cxrnet.json")  # doctest: +SKIP
    """
    excluded: Counter[str] = Counter()

    def ieee8023_class(record: Record) -> str | None:
        name = cxrnet_finding_class(record["finding"])
        if name is None:
            excluded[record["finding"]] += 1
        else:
            _check_ieee8023_label(record, name)
        return name

    records = _two_source_records(
        root, ieee8023_dir, kermany_dir, views, CXRNET_CLASSES, ieee8023_class,
        lambda label: _KERMANY_TO_CXRNET[KERMANY_CLASSES[label]],
    )  # fmt: skip
    counts = Counter((r["source"], r["class_name"]) for r in records)
    kept = {f"{source}/{name}": n for (source, name), n in sorted(counts.items())}
    logger.info(
        "cxrnet_four_class at %s: kept %d images %s; excluded %d ieee8023 images by finding %s.",
        root,
        len(records),
        kept,
        sum(excluded.values()),
        dict(sorted(excluded.items())),
    )
    return require_records(records, root, "CXRNet four-class set")


# ----------------------------------------------------------------------------------- DeepCOVIDExplainer
DEEPCOVID_CLASSES = ("normal", "pneumonia", "covid19")
"""Classes of DeepCOVIDExplainer (seed 002 sec. III-A); label = index."""

_IEEE8023_TO_DEEPCOVID = {"normal": "normal", "pneumonia_other": "pneumonia", "COVID-19": "covid19"}
_KERMANY_TO_DEEPCOVID = {"normal": "normal", "pneumonia_bacterial": "pneumonia", "pneumonia_viral": "pneumonia"}


@register_dataset("deepcovid_three_class", class_names=DEEPCOVID_CLASSES, group_key="split_group", patient_ids=False)
def deepcovid_three_class(
    root: str | PathLike,
    ieee8023_dir: str = "cxr_ieee8023_lungmasks",
    kermany_dir: str = "cxr_kermany_skytells_val",
    views: Sequence[str] | str | None = FRONTAL_VIEWS,
) -> list[Record]:
    """DeepCOVIDExplainer's three classes from the staged ieee8023 and Kermany subsets together.

    .. warning::
        **The sources differ by class** (see :func:`cxrnet_four_class`): every COVID-19 image is an adult
        ieee8023 image, most normal and pneumonia images are paediatric Kermany images. Report results
        per source. The paper's COVIDx-based data mixes sources by class in the same way.

    Classes (:data:`DEEPCOVID_CLASSES`; label = index): normal = Kermany normal + ieee8023 "No Finding";
    pneumonia = Kermany bacterial and viral + every ieee8023 non-COVID finding (the manifest's
    ``pneumonia_other``, which includes fungal, lipoid and tuberculous findings); covid19 = ieee8023
    COVID-19. The ieee8023 label is the manifest's three-class ``label`` column.

    Records as :func:`cxrnet_four_class` gives them (``image``, ``label``, ``class_name``, ``patient_id``,
    ``source``, ``split_group``; ieee8023 records also ``finding``, ``view`` and the masks
    ``lung_mask`` / ``lung_lr_mask`` / ``lesion_mask`` where they exist).

    Example
    -------
    >>> build_datalist("deepcovid_three_class", "../shared/data", output="deepcovid.json")  # doctest: +SKIP
    """
    records = _two_source_records(
        root, ieee8023_dir, kermany_dir, views, DEEPCOVID_CLASSES,
        lambda record: _IEEE8023_TO_DEEPCOVID[record["class_name"]],
        lambda label: _KERMANY_TO_DEEPCOVID[KERMANY_CLASSES[label]],
    )  # fmt: skip
    counts = Counter((r["source"], r["class_name"]) for r in records)
    logger.info(
        "deepcovid_three_class at %s: kept %d images %s.",
        root,
        len(records),
        {f"{source}/{name}": n for (source, name), n in sorted(counts.items())},
    )
    return require_records(records, root, "DeepCOVIDExplainer three-class set")
