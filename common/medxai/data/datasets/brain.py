"""Builders for the staged brain MRI ventricle segmentation sets (``../shared/data``).

* FreeSurfer sample subject "bert": one T1 volume at 1 mm and as simulated 5 mm slabs, with ventricle
  labels (1 lateral, 2 third, 3 fourth) from FreeSurfer's automatic segmentation.
* Carrieri 2D course set: three axial slices of one head, T2 and PD, with hand-drawn ventricle masks.

Both are segmentation sets: ``label`` is the mask path (MONAI's convention). Each holds a **single
subject**, so a patient-level split puts everything in one subset; split by ``group_key="slice"``
(Carrieri) only for a demonstration, knowing that the subsets then share a head.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from medxai.data.datasets._records import Record, read_manifest, require_dir, require_file, require_records
from medxai.data.datasets.registry import register_dataset
from medxai.errors import DatasetError

__all__ = ["brain_ventricles_bert_manifest", "brain_ventricles_carrieri_manifest", "CARRIERI_SUBJECT"]

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
