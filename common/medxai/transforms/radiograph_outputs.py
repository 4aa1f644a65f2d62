"""What a radiologist looks at for one classified chest X-ray: class probabilities, the explanation map on
the image, boxes, a sentence, and the network's input beside the original (seed 001 Figs. 10 and 12).

:class:`WriteRadiographOutputsd` is the 2D counterpart of :class:`medxai.transforms.outputs.WriteCaseOutputsd`
(CT volumes). Arrays arrive as MONAI loads a PNG, (1, X, Y) with ``X`` the image columns; PNGs are written
as displayed (rows, columns), and the sentence reads the map in display orientation (patient's right on
the image left, :mod:`medxai.explain.anatomy`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medxai.errors import InputError
from medxai.explain.boxes import ThresholdMode, boxes_from_map, threshold_map
from medxai.explain.normalize import relu_max
from medxai.explain.text import METHOD_NAMES, TextExplanation, describe
from medxai.explain.writers import affine_from, render_overlay, save_json, save_map_nifti
from medxai.transforms.outputs import CaseOutputWriter

__all__ = ["WriteRadiographOutputsd"]


def _plane(data: Mapping[Hashable, Any], key: str) -> np.ndarray:
    """The (X, Y) plane of a (1, X, Y) array or tensor under ``key``."""
    if key not in data:
        raise InputError(f"key '{key}' is missing; the data has {sorted(map(str, data))}.")
    value = data[key]
    array = np.asarray(value.detach().cpu().float() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(f"'{key}' must be a 2D image (1, X, Y), got shape {list(np.shape(value))}.")
    if not np.isfinite(array).all():
        raise InputError(f"'{key}' holds {int((~np.isfinite(array)).sum())} NaN/Inf values.")
    return array


def _grey(plane: np.ndarray) -> np.ndarray:
    """(H, W) uint8 of a plane scaled by its own minimum and maximum."""
    low, high = float(plane.min()), float(plane.max())
    scaled = (plane - low) / (high - low) if high > low else np.zeros_like(plane)
    return (255 * scaled).round().astype(np.uint8)


class WriteRadiographOutputsd(CaseOutputWriter):
    """Write one classified radiograph's outputs under ``<output_dir>/<case>/``.

    - ``<case>_summary.json``: probability per class, the predicted class, the ``explained`` class (the
      predicted one) and the sentence of :func:`medxai.explain.text.describe` for it, built from the
      salient part of the map (what the boxes keep) and the lung mask; the boxes; the file names;
    - ``<case>_boxes.json``: boxes around the connected components of the ReLU'd, max-normalised map above
      ``box_threshold`` (:func:`medxai.explain.boxes.boxes_from_map`, pixel corners ``min``/``max`` in
      (X, Y) as loaded, and mm with the image's affine);
    - ``<case>_map.nii.gz``: the raw map (X, Y) with the image's affine;
    - ``<case>_overlay.png``: the map (jet) and boxes over the original image, one image pixel per PNG pixel;
    - with ``input_key``, ``<case>_input.png``: the original image and the network's input (lung-segmented,
      contrast-enhanced) side by side, each scaled to its own range (seed 001 Fig. 10). The input is on the
      network's grid; it is resized to the original's height for the side-by-side view only.

    Parameters
    ----------
    output_dir
        Root folder; each case gets a subfolder.
    image_key
        The original image (1, X, Y), kept aside before preprocessing (``CopyItemsd``).
    map_key
        The explanation map (1, X, Y) on the original image's grid (``Invertd``).
    lung_key
        Lung mask (1, X, Y) on the same grid (labelled 1 right / 2 left, or binary), for the sentence;
        ``None`` when there is none: the sentence then gives the class and probability and says that the
        map is not located by lung zone.
    probs_key
        Class probabilities (C,).
    class_names
        One name per class, in the network's output order.
    method
        Explainer name for the sentence (``"cxrnet"``: "the CXRNet representation image").
    input_key
        Optional network input (1, x, y) for ``<case>_input.png``.
    box_threshold, box_mode, box_min_size
        See :func:`medxai.explain.boxes.boxes_from_map`, on the [0, 1] normalised map.
    case_name_fn, pseudonymize
        ``case_name_fn(data) -> str`` for the output name; default: :func:`medxai.transforms.outputs.output_case_name` of the image's
        file name, pseudonymised with ``pseudonymize``.
    summary_key
        Key under which the summary dict is added to the returned data.

    Raises
    ------
    MedXAIError
        Naming the case (its output name) when one of its outputs cannot be written.
    """

    def __init__(
        self,
        output_dir: str | Path,
        image_key: str = "image_original",
        map_key: str = "map",
        lung_key: str | None = "lung_mask_original",
        probs_key: str = "pred",
        class_names: Sequence[str] = ("normal", "bacterial", "viral", "covid19"),
        method: str = "cxrnet",
        input_key: str | None = "image",
        box_threshold: float = 0.5,
        box_mode: ThresholdMode = "relative",
        box_min_size: int = 4,
        case_name_fn: Callable[[Mapping[Hashable, Any]], str] | None = None,
        pseudonymize: bool = False,
        summary_key: str = "summary",
    ) -> None:
        self.class_names = tuple(str(c) for c in class_names)
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise InputError(f"WriteRadiographOutputsd: class_names must be >= 2 distinct names, got {class_names}.")
        self.output_dir = Path(output_dir)
        self.image_key, self.map_key, self.lung_key = image_key, map_key, lung_key
        self.probs_key, self.input_key = probs_key, input_key
        self.method = method
        self.box_threshold, self.box_mode, self.box_min_size = float(box_threshold), box_mode, int(box_min_size)
        self.case_name_fn = case_name_fn
        self.pseudonymize = pseudonymize
        self.summary_key = summary_key

    def _write(self, d: Mapping[Hashable, Any], case: str, folder: Path) -> dict[str, Any]:
        names = self.class_names
        image = _plane(d, self.image_key)
        saliency = _plane(d, self.map_key)
        lung = None if self.lung_key is None else np.rint(_plane(d, self.lung_key)).astype(np.int16)
        if image.shape != saliency.shape or (lung is not None and lung.shape != image.shape):
            raise InputError(
                f"'{self.image_key}' {image.shape}, '{self.map_key}' {saliency.shape} and '{self.lung_key}' "
                f"{None if lung is None else lung.shape} must share one grid; invert the map into the image's "
                "geometry first (Invertd)."
            )
        value = d.get(self.probs_key)
        probs = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        if probs.shape != (len(names),) or not np.isfinite(probs).all():
            raise InputError(f"'{self.probs_key}' must be {len(names)} finite probabilities, got {probs.tolist()}.")
        affine = affine_from(d[self.image_key])
        if affine is None:
            affine = np.eye(3)

        normalised = relu_max(torch.from_numpy(saliency)[None, None])[0, 0].numpy()
        boxes = boxes_from_map(normalised, self.box_threshold, self.box_mode, self.box_min_size, affine=affine)
        predicted = int(np.argmax(probs))
        salient, _ = threshold_map(normalised, self.box_threshold, self.box_mode)
        focus = np.where(salient, normalised, 0.0)
        name, score = names[predicted], float(probs[predicted])
        if lung is not None:  # anatomy reads (H, W) as displayed: the loaded (X, Y) planes transposed
            # the score is the class probability for every method (also LRP, whose own score is a relevance)
            text = describe(focus.T, lung.T, name, score, self.method, score_kind="probability")
        else:
            method = METHOD_NAMES.get(self.method.lower(), self.method)
            sentence = (
                f"{name} (probability {score:.2f}). No lung mask was given, so {method} is not located by lung "
                "zone; see the boxes."
            )
            text = TextExplanation(sentence, name, score, "probability", self.method)
        files = {
            "summary": f"{case}_summary.json",
            "boxes": f"{case}_boxes.json",
            "map": f"{case}_map.nii.gz",
            "overlay": f"{case}_overlay.png",
        }
        if self.input_key is not None:
            files["input"] = f"{case}_input.png"
        summary = {
            "case": case,
            "class_names": list(names),
            "probabilities": {name: float(p) for name, p in zip(names, probs)},
            "predicted_class": names[predicted],
            "predicted_index": predicted,
            "explained_class": names[predicted],
            "method": self.method,
            "sentence": text.sentence,
            "explanation": text.as_dict(),
            "boxes": boxes,
            "shape": list(image.shape),
            "files": files,
        }
        box_record = {
            "case": case,
            "normalisation": "relu_max",
            "threshold": self.box_threshold,
            "threshold_mode": self.box_mode,
            "min_size": self.box_min_size,
            "boxes": boxes,
        }
        folder.mkdir(parents=True, exist_ok=True)
        save_json(box_record, folder, case, suffix="_boxes")
        save_json(summary, folder, case, suffix="_summary")
        save_map_nifti(saliency.astype(np.float32), folder, case, affine=affine, suffix="_map")
        display_boxes = [{**b, "min": b["min"][::-1], "max": b["max"][::-1]} for b in boxes]
        overlay = render_overlay(image.T, normalised.T, display_boxes)
        Image.fromarray(overlay).save(folder / files["overlay"], format="PNG")
        if self.input_key is not None:
            self._save_side_by_side(_plane(d, self.input_key), image, folder / files["input"])
        return summary

    @staticmethod
    def _save_side_by_side(network_input: np.ndarray, image: np.ndarray, path: Path) -> None:
        original = _grey(image.T)
        height = original.shape[0]
        width = max(1, round(network_input.shape[0] * height / network_input.shape[1]))
        shown = Image.fromarray(_grey(network_input.T)).resize((width, height), Image.Resampling.BILINEAR)
        gap = np.full((height, 4), 255, dtype=np.uint8)
        Image.fromarray(np.concatenate([original, gap, np.asarray(shown)], axis=1)).save(path, format="PNG")
