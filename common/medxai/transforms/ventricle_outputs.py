"""What the ventricle segmentation bundle hands a user per volume (seed 003 sec. 3.3, Fig. 17-18).

- :class:`LatentExpectedDiced`: the expected Dice of every slice with predicted ventricles, read off the
  latent-space Dice landscape that evaluation fitted (sec. 3.3.3: "users can set their expectations
  accordingly"): the slice's bottleneck features are projected with the saved PCA and passed through the
  saved MLP (:class:`medxai.explain.latent_space.LatentLandscape`).
- :class:`WriteVentricleSegmentationd`: per case, the label map as NIfTI with the input's geometry, the
  volume of each ventricle class in ml, the slice range, the mean confidence, a sentence, and a PNG of the
  slices with the largest predicted ventricles with the labels overlaid.
- :func:`write_ventricle_predictions`: the per-case summaries gathered into ``predictions.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from monai.data import MetaTensor
from monai.transforms import Transform

from medxai.data.synthetic.io import save_nifti
from medxai.errors import InputError
from medxai.explain.latent_space import latent_features, load_latent_landscape
from medxai.explain.writers import save_json
from medxai.transforms.outputs import CaseOutputWriter, read_summaries

__all__ = ["LatentExpectedDiced", "WriteVentricleSegmentationd", "write_ventricle_predictions", "describe_ventricles"]

_SUMMARY_SUFFIX = "_summary.json"
_LABEL_COLOURS = ("#00000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4")


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(value)


class LatentExpectedDiced(Transform):
    """Add ``expected_dice`` (Z,): the landscape's Dice for each slice with predicted ventricles, NaN elsewhere.

    Apply it to the preprocessed image (C, X, Y, Z) and the network's class probabilities or logits
    (K, X, Y, Z) on the same grid, before ``Invertd``.

    Parameters
    ----------
    network
        The segmentation network (2D, on slices (S, C, X, Y)).
    layer
        Dotted name of its bottleneck (the layer the landscape was fitted on).
    landscape_path
        ``latent_landscape.npz`` written by evaluation (:class:`medxai.engines.segmentation.LatentSpaceHandler`).
    pool
        Pooling of the bottleneck map, as at fitting time.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        layer: str,
        landscape_path: str | Path,
        image_key: str = "image",
        pred_key: str = "pred",
        output_key: str = "expected_dice",
        pool: str = "avg",
        batch_size: int = 32,
    ) -> None:
        path = Path(landscape_path)
        if not path.is_file():
            raise InputError(
                f"latent landscape {path} does not exist: run evaluate.json first (it fits the landscape on the "
                "labelled test volumes and saves it there)."
            )
        self.landscape = load_latent_landscape(path)
        self.network, self.layer, self.pool, self.batch_size = network, layer, pool, int(batch_size)
        self.image_key, self.pred_key, self.output_key = image_key, pred_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key]).as_subclass(torch.Tensor)
        pred = torch.as_tensor(d[self.pred_key]).as_subclass(torch.Tensor)
        if image.dim() != 4 or pred.dim() != 4 or image.shape[1:] != pred.shape[1:]:
            raise InputError(
                f"LatentExpectedDiced: image {tuple(image.shape)} and pred {tuple(pred.shape)} must be (C, X, Y, Z) "
                "volumes on one grid."
            )
        has_ventricle = (pred.argmax(dim=0) > 0).flatten(0, 1).any(dim=0)  # (Z,)
        expected = np.full(image.shape[-1], np.nan)
        keep = torch.nonzero(has_ventricle).flatten()
        if keep.numel():
            slices = torch.movedim(image, 3, 0)[keep]  # (S, C, X, Y)
            features = latent_features(self.network, slices, self.layer, self.pool, self.batch_size)
            expected[keep.numpy()] = self.landscape.expected_dice(features)
        d[self.output_key] = expected
        return d


def describe_ventricles(
    volumes_ml: Mapping[str, float],
    slice_range: Sequence[int] | None,
    num_slices: int,
    confidence: float | None,
    expected_dice: Mapping[str, Any] | None = None,
) -> str:
    """One plain sentence: where the ventricles are, how large, how sure; optionally the expected Dice."""
    if slice_range is None:
        return f"No ventricles were found on any of the {num_slices} axial slices."
    sizes = ", ".join(f"{name} {value:.1f} ml" for name, value in volumes_ml.items())
    text = f"Ventricles found on axial slices {slice_range[0]}-{slice_range[1]} of {num_slices}: {sizes}"
    if confidence is not None:
        text += f"; mean confidence {confidence:.2f}"
    text += "."
    if expected_dice and expected_dice.get("mean") is not None:
        text += (
            f" Expected Dice from the latent-space landscape: {expected_dice['mean']:.2f} on average, lowest "
            f"{expected_dice['min']:.2f} on slice {expected_dice['min_slice']}."
        )
    return text


class WriteVentricleSegmentationd(CaseOutputWriter):
    """Write one volume's ventricle segmentation under ``<output_dir>/<case>/``.

    Files:

    - ``<case>_ventricles.nii.gz``: class indices (X, Y, Z), uint8, with the affine of ``label_key``'s
      MetaTensor (invert the prediction to the input's geometry first, ``Invertd``);
    - ``<case>_summary.json``: ``case``, ``shape``, ``voxel_volume_ml``, ``volume_ml`` per class,
      ``slice_range`` (first and last axial slice with ventricles, ``null`` when none), ``largest_slice``,
      ``mean_confidence`` (mean of the top class probability inside the predicted ventricles, when
      ``prob_key`` is given), ``expected_dice`` (mean, min and the slice of the min over slices with
      predicted ventricles, when ``expected_dice_key`` is given) and ``sentence``;
    - ``<case>_overlay.png``: the ``num_overlay_slices`` axial slices with the largest predicted ventricle
      area, image in grey and each class in its colour, anterior up.

    Parameters
    ----------
    output_dir
        Root folder; each case gets a subfolder.
    image_key
        The image (1, X, Y, Z) on the label's grid (the loaded image kept aside with ``CopyItemsd``).
    label_key
        Predicted class indices (1, X, Y, Z).
    class_names
        Names of the classes, background first.
    prob_key
        Optional class probabilities (K, X, Y, Z) on the same grid.
    expected_dice_key
        Optional per-slice expected Dice (Z,) from :class:`LatentExpectedDiced` (slice indices of the
        network's grid, which keeps the input's slice axis).
    """

    def __init__(
        self,
        output_dir: str | Path,
        image_key: str = "original_image",
        label_key: str = "pred",
        class_names: Sequence[str] = ("background", "lateral", "third", "fourth"),
        prob_key: str | None = None,
        expected_dice_key: str | None = None,
        num_overlay_slices: int = 3,
        case_name_fn: Callable[[Mapping[Hashable, Any]], str] | None = None,
        pseudonymize: bool = False,
        summary_key: str = "summary",
    ) -> None:
        if len(class_names) < 2:
            raise InputError(f"class_names must name the background and at least one class, got {list(class_names)}.")
        self.output_dir = Path(output_dir)
        self.image_key, self.label_key = image_key, label_key
        self.class_names = [str(c) for c in class_names]
        self.prob_key, self.expected_dice_key = prob_key, expected_dice_key
        self.num_overlay_slices = int(num_overlay_slices)
        self.case_name_fn, self.pseudonymize, self.summary_key = case_name_fn, pseudonymize, summary_key

    def _volume(self, data: Mapping[Hashable, Any], key: str, case: str) -> np.ndarray:
        if key not in data:
            raise InputError(f"case {case}: missing key '{key}'.")
        array = _numpy(data[key])
        if array.ndim != 4 or array.shape[0] != 1:
            raise InputError(f"case {case}: '{key}' must be a (1, X, Y, Z) volume, got shape {array.shape}.")
        return array[0]

    def _write(self, data: Mapping[Hashable, Any], case: str, folder: Path) -> dict[str, Any]:
        labels = np.rint(self._volume(data, self.label_key, case)).astype(np.int64)
        image = self._volume(data, self.image_key, case).astype(np.float32)
        if image.shape != labels.shape:
            raise InputError(f"case {case}: image {image.shape} and labels {labels.shape} differ in shape.")
        if labels.min() < 0 or labels.max() >= len(self.class_names):
            raise InputError(f"case {case}: labels span [{labels.min()}, {labels.max()}], outside the class range.")
        source = data[self.label_key]
        affine = np.asarray(source.affine, dtype=np.float64) if isinstance(source, MetaTensor) else np.eye(4)
        save_nifti(labels, affine, folder / f"{case}_ventricles.nii.gz", dtype=np.uint8)
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        volumes = {
            name: float((labels == index).sum() * voxel_ml) for index, name in enumerate(self.class_names) if index
        }
        area = (labels > 0).sum(axis=(0, 1))
        rows = np.flatnonzero(area)
        slice_range = None if rows.size == 0 else [int(rows[0]), int(rows[-1])]
        confidence = None
        if self.prob_key is not None and rows.size:
            probs = _numpy(data[self.prob_key])
            if probs.shape[1:] != labels.shape:
                raise InputError(
                    f"case {case}: '{self.prob_key}' {probs.shape} does not match the labels {labels.shape}."
                )
            confidence = float(probs.max(axis=0)[labels > 0].mean())
        expected = None
        if self.expected_dice_key is not None and self.expected_dice_key in data:
            values = np.asarray(_numpy(data[self.expected_dice_key]), dtype=np.float64).reshape(-1)
            if values.shape != area.shape:
                raise InputError(
                    f"case {case}: '{self.expected_dice_key}' has {values.size} slices, the labels {area.size}."
                )
            finite = np.flatnonzero(np.isfinite(values) & (area > 0))  # slices with ventricles in the final labels
            if finite.size:
                worst = int(finite[np.argmin(values[finite])])
                expected = {"mean": float(values[finite].mean()), "min": float(values[worst]), "min_slice": worst,
                            "per_slice": {int(i): round(float(values[i]), 4) for i in finite}}  # fmt: skip
        summary = {
            "case": case,
            "shape": [int(s) for s in labels.shape],
            "voxel_volume_ml": voxel_ml,
            "volume_ml": volumes,
            "slice_range": slice_range,
            "largest_slice": int(np.argmax(area)) if rows.size else None,
            "mean_confidence": confidence,
            "expected_dice": expected,
            "sentence": describe_ventricles(volumes, slice_range, labels.shape[-1], confidence, expected),
        }
        save_json(summary, folder, case, suffix=_SUMMARY_SUFFIX[: -len(".json")])
        self._overlay(image, labels, area, folder / f"{case}_overlay.png")
        return summary

    def _overlay(self, image: np.ndarray, labels: np.ndarray, area: np.ndarray, path: Path) -> None:
        order = [int(i) for i in np.argsort(-area, kind="stable")[: self.num_overlay_slices] if area[i] > 0]
        order = sorted(order) or [labels.shape[-1] // 2]
        low, high = np.percentile(image, [1, 99])
        colours = ListedColormap(list(_LABEL_COLOURS[: len(self.class_names)]))
        figure = Figure(figsize=(3.0 * len(order), 3.3))
        FigureCanvasAgg(figure)
        for column, index in enumerate(order):
            axes = figure.add_subplot(1, len(order), column + 1)
            axes.imshow(np.rot90(image[:, :, index]), cmap="gray", vmin=low, vmax=high)
            shown = np.ma.masked_equal(np.rot90(labels[:, :, index]), 0)
            top = len(self.class_names) - 1
            axes.imshow(shown, cmap=colours, vmin=0, vmax=top, alpha=0.55, interpolation="nearest")
            axes.set_title(f"slice {index}", fontsize=9)
            axes.axis("off")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)


def write_ventricle_predictions(output_dir: str | Path, path: str | Path | None = None) -> Path:
    """Gather ``<case>_summary.json`` files into ``predictions.csv``: case, one ``<class>_ml`` column per
    ventricle class, first and last slice, mean confidence, mean expected Dice and the sentence."""
    rows = read_summaries(output_dir, _SUMMARY_SUFFIX)
    out = Path(path) if path is not None else Path(output_dir) / "predictions.csv"
    names = list(rows[0]["volume_ml"]) if rows else []
    with open(out, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", *[f"{n}_ml" for n in names], "first_slice", "last_slice", "mean_confidence",
                         "expected_dice", "sentence"])  # fmt: skip
        for row in rows:
            first, last = row["slice_range"] or ["", ""]
            confidence = "" if row["mean_confidence"] is None else f"{row['mean_confidence']:.4f}"
            expected = "" if not row.get("expected_dice") else f"{row['expected_dice']['mean']:.4f}"
            volumes = [f"{row['volume_ml'][n]:.3f}" for n in names]
            writer.writerow([row["case"], *volumes, first, last, confidence, expected, row["sentence"]])
    return out
