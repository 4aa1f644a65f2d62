"""Builders for the staged brain MRI ventricle segmentation sets (``../shared/data``).

* FreeSurfer sample subject "bert": one T1 volume at 1 mm and as simulated 5 mm slabs, with ventricle
  labels (1 lateral, 2 third, 3 fourth) from FreeSurfer's automatic segmentation.
* Carrieri 2D course set: three axial slices of one head, T2 and PD, with hand-drawn ventricle masks.

Both are segmentation sets: ``label`` is the mask path (MONAI's convention). Each holds a **single
subject**, so a patient-level split puts everything in one subset; split by ``group_key="slice"``
(Carrieri) only for a demonstration, knowing that the subsets then share a head.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from medxai.data.datasets._records import Record, read_manifest, require_dir, require_file, require_records
from medxai.data.datasets.registry import register_dataset
from medxai.errors import DatasetError

__all__ = [
    "brain_ventricles_bert_manifest",
    "brain_ventricles_carrieri_manifest",
    "bert_thick_thin_datalist",
    "CARRIERI_SUBJECT",
]

CARRIERI_SUBJECT = "carrieri-head-1"


def _spacing(text: str, where: str) -> list[float]:
    """``"1.0x1.0x5.0"`` -> ``[1.0, 1.0, 5.0]``."""
    try:
        values = [float(v) for v in text.lower().split("x")]
    except ValueError as exc:
        raise DatasetError(f"{where}: spacing_mm {text!r} is not like '1.0x1.0x5.0'.") from exc
    if len(values) != 3 or min(values) <= 0:
        raise DatasetError(f"{where}: spacing_mm {text!r} must be three positive numbers.")
    return values


@register_dataset("brain_ventricles_bert_manifest", task="segmentation", stratify_key="resolution")
def brain_ventricles_bert_manifest(root: str | PathLike, manifest: str = "manifest.csv") -> list[Record]:
    """FreeSurfer "bert" ventricles, thin (1 mm) and thick (5 mm) versions.

    Layout::

        <root>/manifest.csv   columns image, label, spacing_mm, subject
        <root>/thin_1mm/image.nii.gz, thin_1mm/ventricles.nii.gz
        <root>/thick_5mm/image.nii.gz, thick_5mm/ventricles.nii.gz

    Records: ``image``, ``label`` (ventricle label map), ``resolution`` (the image's folder name),
    ``spacing_mm`` and ``patient_id`` (the subject).
    """
    root = require_dir(root)
    path = root / manifest
    records = []
    for line, row in enumerate(read_manifest(path, ["image", "label", "spacing_mm", "subject"]), start=2):
        where = f"manifest {path} line {line}"
        image = require_file(root / row["image"], where)
        records.append(
            {
                "image": str(image),
                "label": str(require_file(root / row["label"], where)),
                "resolution": Path(row["image"]).parent.name,
                "spacing_mm": _spacing(row["spacing_mm"], where),
                "patient_id": row["subject"],
            }
        )
    return require_records(records, root, "FreeSurfer bert ventricles")


@register_dataset("brain_ventricles_carrieri_manifest", task="segmentation", stratify_key="sequence")
def brain_ventricles_carrieri_manifest(root: str | PathLike, manifest: str = "manifest.csv") -> list[Record]:
    """Carrieri 2D ventricle slices (T2 and PD of one head share each slice's mask).

    Layout::

        <root>/manifest.csv   columns image, mask, sequence (T2 | PD), slice
        <root>/images/slice19_T2.png, ventricle_mask/slice19.png, ...

    Records: ``image``, ``label`` (mask), ``sequence``, ``slice`` and ``patient_id`` (one head for all).
    """
    root = require_dir(root)
    path = root / manifest
    records = []
    for line, row in enumerate(read_manifest(path, ["image", "mask", "sequence", "slice"]), start=2):
        where = f"manifest {path} line {line}"
        if not row["slice"].isdigit():
            raise DatasetError(f"{where}: slice {row['slice']!r} is not a slice number.")
        records.append(
            {
                "image": str(require_file(root / row["image"], where)),
                "label": str(require_file(root / row["mask"], where)),
                "sequence": row["sequence"],
                "slice": int(row["slice"]),
                "patient_id": CARRIERI_SUBJECT,
            }
        )
    return require_records(records, root, "Carrieri ventricle slices")


def bert_thick_thin_datalist(
    bert_root: str | PathLike,
    synthetic_datalist: str | PathLike,
    output: str | PathLike,
    manifest: str = "manifest.csv",
) -> Path:
    """The thick-to-thin transfer experiment of the ventricle bundle on the FreeSurfer "bert" subject.

    Seed 003 trains on labelled thick slices and unlabelled thin slices and tests on thin slices. With one
    real subject, that becomes: ``training`` = the synthetic set's training volumes (thick labelled, thin
    unlabelled) plus bert's 5 mm volume (labelled) and bert's 1 mm volume (unlabelled: the training configs
    keep only its image); ``validation`` = the synthetic validation volumes; ``test`` = bert's 1 mm volume
    (the result that matters: the labels of thin slices were never used) and bert's 5 mm volume (seen with
    labels in training, reported for reference only).

    Parameters
    ----------
    bert_root
        The shared ``brain_mri_ventricles_freesurfer_bert`` folder.
    synthetic_datalist
        The synthetic brain demo set's ``datalist.json`` (``medxai demo-data --sets brain``).
    output
        Folder that receives ``datalist.json`` (absolute paths), the ``dataset_dir`` of the bundle.

    Returns
    -------
    The datalist path.
    """
    records = brain_ventricles_bert_manifest(bert_root, manifest)
    thickness = {"thin_1mm": "thin", "thick_5mm": "thick"}
    bert = []
    for record in records:
        if record["resolution"] not in thickness:
            raise DatasetError(f"bert record {record['image']}: unknown resolution folder '{record['resolution']}'.")
        bert.append({"image": record["image"], "label": record["label"], "thickness": thickness[record["resolution"]],
                     "patient_id": record["patient_id"], "slice_thickness_mm": record["spacing_mm"][2]})  # fmt: skip
    if sorted(r["thickness"] for r in bert) != ["thick", "thin"]:
        raise DatasetError(f"bert manifest {Path(bert_root) / manifest} must list one thin and one thick volume.")
    source = require_file(Path(synthetic_datalist), "synthetic datalist")
    try:
        synthetic = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"synthetic datalist {source} is not valid JSON: {err}") from err

    def absolute(split: str) -> list[Record]:
        if split not in synthetic:
            raise DatasetError(f"synthetic datalist {source} has no '{split}' list.")
        return [{**r, "image": str(source.parent / r["image"]), "label": str(source.parent / r["label"])}
                for r in synthetic[split]]  # fmt: skip

    content = {
        "training": absolute("training") + bert,
        "validation": absolute("validation"),
        "test": sorted(bert, key=lambda r: r["thickness"] != "thin"),
        "metadata": {
            "description": "bert thick-to-thin transfer: synthetic + bert training, synthetic validation, bert test",
            "bert_root": str(Path(bert_root).resolve()),
            "synthetic_datalist": str(source.resolve()),
        },
    }
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datalist.json"
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path
