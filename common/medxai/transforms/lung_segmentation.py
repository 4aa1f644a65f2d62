"""Lung segmentation of chest X-rays with a trained ``cxr_lung_segmentation`` bundle (seed 001 sec. III-A-1).

- :func:`load_lung_segmentation_bundle` builds the network of a trained bundle from its
  ``configs/inference.json`` (``network_def``, parsed by :class:`monai.bundle.ConfigParser`) and loads the
  plain state dict ``models/model.pt`` with ``weights_only=True``.
- :class:`LungSegmentationd` runs that network on an already loaded image in a data dictionary and adds the
  predicted lung mask (and optionally the lung probability) at the image's own size, so another bundle
  (CXRNet) can segment the lungs as a preprocessing step.
- :class:`WriteLungSegmentationd` writes what the bundle's inference gives a user per case: the mask as PNG
  and NIfTI, the lung-segmented image cropped to the lungs, and a JSON summary; :func:`write_lung_predictions`
  gathers the summaries into ``predictions.csv``.

Images are MONAI channel-first 2D tensors ``(C, X, Y)`` as :class:`medxai.data.io.LoadMedicalImaged` returns
them for PNG files: ``X`` runs along the image columns and ``Y`` along the rows (MONAI's ``PILReader``
transposes the ``(rows, columns)`` pixel array), so PNGs are written back with the transpose.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, ScaleIntensity, Transform
from monai.utils import ImageMetaKey

from medxai.data.synthetic.io import save_nifti, save_png
from medxai.errors import InputError
from medxai.explain.writers import check_case_name, save_map_nifti, save_overlay_png
from medxai.serialization import weights_load_reason
from medxai.transforms.outputs import output_case_name, read_summaries

__all__ = [
    "load_lung_segmentation_bundle",
    "segment_lungs",
    "LungSegmentationd",
    "lung_bounding_box_2d",
    "WriteLungSegmentationd",
    "write_lung_predictions",
]

_SUMMARY_SUFFIX = "_summary.json"


def load_lung_segmentation_bundle(
    bundle_dir: str | Path,
    checkpoint: str | Path | None = None,
    config_files: str | Sequence[str] = "configs/inference.json",
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, tuple[int, int]]:
    """The trained network of a lung-segmentation bundle and the input size it was trained at.

    Parameters
    ----------
    bundle_dir
        Folder of the bundle (with ``configs/inference.json`` and ``models/model.pt``).
    checkpoint
        State dict to load (default ``<bundle_dir>/models/model.pt``); loaded with ``weights_only=True``.
    config_files
        Config file(s) (relative to ``bundle_dir`` or absolute), merged in order as ``monai.bundle`` merges
        ``--config_file`` lists, whose ``network_def`` and ``image_size`` are used: add the overlay the
        bundle was trained with, e.g. ``["configs/inference.json", "configs/demo.json"]``.
    device
        Where the network is put; it is returned in ``eval`` mode.

    Returns
    -------
    (network, image_size)
        The network (logits (B, C, X, Y) for images (B, 1, X, Y)) and ``image_size`` ``(X, Y)``.
    """
    root = Path(bundle_dir)
    names = [config_files] if isinstance(config_files, (str, Path)) else list(config_files)
    config_paths = [root / name for name in names]
    missing = [str(name) for name, path in zip(names, config_paths) if not path.is_file()]
    if not config_paths or missing:
        raise InputError(f"lung segmentation bundle {root}: no config file(s) {missing or names}.")
    weights = Path(checkpoint) if checkpoint is not None else root / "models" / "model.pt"
    if not weights.is_file():
        raise InputError(
            f"lung segmentation bundle {root}: checkpoint {weights} does not exist; train the bundle first."
        )
    parser = ConfigParser()
    parser.read_config([str(path) for path in config_paths])
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def", instantiate=True)
    size = parser.get_parsed_content("image_size")
    if len(size) != 2:
        raise InputError(f"lung segmentation bundle {root}: image_size must have 2 entries, got {size}.")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"lung segmentation bundle {root}: cannot load checkpoint {weights}: {weights_load_reason(exc)}"
        ) from exc
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputError(
            f"lung segmentation bundle {root}: checkpoint {weights.name} does not fit network_def: {first}"
        ) from exc
    return network.to(device).eval(), (int(size[0]), int(size[1]))


def segment_lungs(
    network: torch.nn.Module, image: torch.Tensor, image_size: Sequence[int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Lung probability of one image at its own size.

    Mirrors the bundle's inference after loading (``configs/inference.json``): bilinear resize with
    anti-aliasing to ``image_size`` (:class:`monai.transforms.Resize`), min-max scaling to [0, 1], softmax of
    the network's logits, and the bilinear resize back that ``Invertd`` applies, so the mask equals the one
    the bundle writes.

    Parameters
    ----------
    image
        (1, X, Y) grayscale image, any intensity range.

    Returns
    -------
    torch.Tensor
        (C, X, Y) class probabilities on the CPU (channel 0 background, the rest lung classes).
    """
    array = (image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)).float()
    if array.ndim != 3 or array.shape[0] != 1:
        raise InputError(f"lung segmentation needs a (1, X, Y) grayscale image, got shape {tuple(array.shape)}.")
    if not torch.isfinite(array).all():
        raise InputError("lung segmentation input contains NaN or Inf values.")
    x = Resize(tuple(int(s) for s in image_size), mode="bilinear", anti_aliasing=True)(array)
    x = ScaleIntensity(minv=0.0, maxv=1.0)(x)
    with torch.no_grad():
        probs = torch.softmax(network(torch.as_tensor(x)[None].to(device)).float(), dim=1)[0].cpu()
    restored = Resize(tuple(array.shape[1:]), mode="bilinear")(probs)
    return restored.as_tensor() if isinstance(restored, MetaTensor) else torch.as_tensor(restored)


class LungSegmentationd(MapTransform):
    """Add the lung mask predicted by a trained ``cxr_lung_segmentation`` bundle to a data dictionary.

    Example config entry (after the image is loaded)::

        {"_target_": "medxai.transforms.LungSegmentationd", "keys": "image",
         "bundle_dir": "path/to/cxr_lung_segmentation", "mask_key": "lung_mask"}

    Parameters
    ----------
    keys
        The image key (one key; a (1, X, Y) image, as loaded, before any resizing of your own).
    bundle_dir
        The trained bundle (see :func:`load_lung_segmentation_bundle`).
    mask_key
        Where the mask goes: (1, X, Y) float tensor, 1 lung and 0 elsewhere (all lung classes merged), with
        the image's metadata (a ``MetaTensor`` when the image is one).
    prob_key
        Also store the lung probability (1, X, Y) there (``None``: do not).
    overwrite
        Replace an existing ``mask_key`` (default ``False`` keeps a mask that is already there, e.g. a
        ground-truth mask from the datalist).
    checkpoint, config_files, device
        See :func:`load_lung_segmentation_bundle`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        bundle_dir: str | Path,
        mask_key: str = "lung_mask",
        prob_key: str | None = None,
        overwrite: bool = False,
        checkpoint: str | Path | None = None,
        config_files: str | Sequence[str] = "configs/inference.json",
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise InputError(f"LungSegmentationd segments one image key, got {list(self.keys)}.")
        self.network, self.image_size = load_lung_segmentation_bundle(
            bundle_dir, checkpoint, config_files, device=device
        )
        self.device = device
        self.mask_key = mask_key
        self.prob_key = prob_key
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.mask_key in d and not self.overwrite:
                continue
            image = d[key]
            try:
                probs = segment_lungs(self.network, image, self.image_size, self.device)
            except InputError as exc:
                raise InputError(f"LungSegmentationd, key '{key}': {exc}") from exc
            lung_prob = 1.0 - probs[:1]
            mask = (probs.argmax(dim=0, keepdim=True) > 0).float()
            if isinstance(image, MetaTensor):
                mask = MetaTensor(mask, meta=dict(image.meta))
                lung_prob = MetaTensor(lung_prob, meta=dict(image.meta))
            d[self.mask_key] = mask
            if self.prob_key is not None:
                d[self.prob_key] = lung_prob
        return d


def lung_bounding_box_2d(mask: np.ndarray, margin: int = 0) -> tuple[int, int, int, int] | None:
    """``(x0, x1, y0, y1)`` (end exclusive) of the non-zero pixels of a 2D mask, widened by ``margin``
    and clipped to the image; ``None`` for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"lung_bounding_box_2d needs a 2D mask, got shape {mask.shape}.")
    xs, ys = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (
        max(int(xs.min()) - margin, 0),
        min(int(xs.max()) + 1 + margin, mask.shape[0]),
        max(int(ys.min()) - margin, 0),
        min(int(ys.max()) + 1 + margin, mask.shape[1]),
    )


def _to_uint8(image: np.ndarray, image_range: Sequence[float] | None) -> np.ndarray:
    low, high = (float(image.min()), float(image.max())) if image_range is None else map(float, image_range)
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.round(255 * np.clip((image - low) / (high - low), 0, 1)).astype(np.uint8)


class WriteLungSegmentationd(Transform):
    """Write one case's lung segmentation under ``<output_dir>/<case>/``.

    Files (``X``/``Y`` as loaded; PNGs as (rows, columns) like the input PNG):

    - ``<case>_lung.png``: the mask, 0 background and 255 lung (> 127 reads back as lung);
    - ``<case>_lung.nii.gz``: the mask (X, Y, 1), uint8 0/1, with the image's affine;
    - ``<case>_lung_cropped.png``: the lung-segmented image (pixels outside the mask set to 0) cropped to the
      mask's bounding box widened by ``margin``, as the paper feeds CXRNet (seed 001 Fig. 1);
    - ``<case>_summary.json``: ``case``, ``image_shape`` (X, Y), ``lung_pixels``, ``lung_fraction``,
      ``bounding_box`` ``[x0, x1, y0, y1]`` (``null`` when no lung was found) and, when ``prob_key`` is
      given, ``mean_lung_probability`` inside the mask;
    - with ``map_key``: the explanation map (1, X, Y) as ``<case>_<map_name>.nii.gz`` (float32, the image's
      affine; :func:`medxai.explain.writers.save_map_nifti`) and as a jet overlay on the image
      ``<case>_<map_name>.png`` (:func:`medxai.explain.writers.save_overlay_png`, colour scale (0, max)).

    Parameters
    ----------
    output_dir
        Root folder of the outputs.
    image_key
        The image (1, X, Y) at its original size and intensity.
    mask_key
        The mask (1, X, Y): class indices, every value > 0 is lung.
    prob_key
        Optional lung probability (1, X, Y) for the summary.
    margin
        Pixels added around the lungs' bounding box of the cropped image.
    image_range
        Intensity range mapped to 0-255 in the cropped PNG (default: the image's own min and max).
    map_key, map_name
        Optional explanation map (1, X, Y) to write, e.g. Grad-CAM of the lung class (``explain.json``), and
        the file-name suffix of its outputs.
    """

    def __init__(
        self,
        output_dir: str | Path,
        image_key: str = "image",
        mask_key: str = "pred",
        prob_key: str | None = None,
        margin: int = 4,
        image_range: Sequence[float] | None = None,
        map_key: str | None = None,
        map_name: str = "map",
    ) -> None:
        if margin < 0:
            raise InputError(f"margin must be non-negative, got {margin}.")
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.mask_key = mask_key
        self.prob_key = prob_key
        self.margin = int(margin)
        self.image_range = None if image_range is None else tuple(float(v) for v in image_range)
        self.map_key = map_key
        self.map_name = check_case_name(map_name)

    def case_name(self, data: Mapping[Hashable, Any]) -> str:
        """Output name of the case, from the image's file name (:func:`output_case_name`)."""
        image = data.get(self.image_key)
        source = image.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(image, MetaTensor) else None
        if isinstance(source, (list, tuple)):
            source = source[0] if len(source) == 1 else None
        if not source:
            raise InputError(f"WriteLungSegmentationd: '{self.image_key}' carries no file name to name the case.")
        return output_case_name(str(source))

    def _plane(self, data: Mapping[Hashable, Any], key: str, case: str) -> np.ndarray:
        if key not in data:
            raise InputError(f"WriteLungSegmentationd, case {case}: missing key '{key}'.")
        value = data[key]
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
        if array.ndim != 3 or array.shape[0] != 1:
            raise InputError(f"WriteLungSegmentationd, case {case}: '{key}' must be (1, X, Y), got {array.shape}.")
        return array[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        case = self.case_name(data)
        image = self._plane(data, self.image_key, case)
        mask = self._plane(data, self.mask_key, case) > 0
        if mask.shape != image.shape:
            raise InputError(
                f"WriteLungSegmentationd, case {case}: mask {mask.shape} and image {image.shape} differ in size."
            )
        folder = self.output_dir / case
        save_png((mask.T * 255).astype(np.uint8), folder / f"{case}_lung.png")
        source = data[self.image_key]
        affine = np.asarray(source.affine) if isinstance(source, MetaTensor) else np.eye(4)
        save_nifti(mask[:, :, None], affine, folder / f"{case}_lung.nii.gz", dtype=np.uint8)
        box = lung_bounding_box_2d(mask, self.margin)
        segmented = _to_uint8(image, self.image_range) * mask
        if box is not None:
            segmented = segmented[box[0] : box[1], box[2] : box[3]]
        save_png(segmented.T.astype(np.uint8), folder / f"{case}_lung_cropped.png")
        summary: dict[str, Any] = {
            "case": case,
            "image_shape": [int(s) for s in image.shape],
            "lung_pixels": int(mask.sum()),
            "lung_fraction": float(mask.mean()),
            "bounding_box": None if box is None else list(box),
        }
        if self.prob_key is not None:
            prob = self._plane(data, self.prob_key, case)
            summary["mean_lung_probability"] = float(prob[mask].mean()) if mask.any() else None
        if self.map_key is not None:
            saliency = self._plane(data, self.map_key, case)
            if saliency.shape != image.shape:
                raise InputError(
                    f"WriteLungSegmentationd, case {case}: map {saliency.shape} and image {image.shape} differ in size."
                )
            suffix = f"_{self.map_name}"
            save_map_nifti(saliency, folder, case, affine=affine, suffix=suffix)
            save_overlay_png(image.T, saliency.T, folder, case, suffix=suffix)
            summary[f"{self.map_name}_share_in_lung"] = _share_inside(saliency, mask)
        (folder / f"{case}{_SUMMARY_SUFFIX}").write_text(json.dumps(summary, indent=2) + "\n")
        return dict(data)


def _share_inside(saliency: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the positive map energy inside ``mask`` (``None`` for an all-zero map)."""
    positive = np.clip(saliency, 0, None)
    total = float(positive.sum())
    return float(positive[mask].sum() / total) if total > 0 else None


def write_lung_predictions(output_dir: str | Path, path: str | Path | None = None) -> Path:
    """Gather the ``<case>_summary.json`` files under ``output_dir`` into a CSV (default
    ``<output_dir>/predictions.csv``): ``case``, ``lung_pixels``, ``lung_fraction``, ``x0``, ``x1``, ``y0``,
    ``y1`` (empty when no lung was found). Returns the CSV path."""
    rows = read_summaries(output_dir, _SUMMARY_SUFFIX)
    out = Path(path) if path is not None else Path(output_dir) / "predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "lung_pixels", "lung_fraction", "x0", "x1", "y0", "y1"])
        for row in rows:
            box = row.get("bounding_box") or ["", "", "", ""]
            writer.writerow([row["case"], row["lung_pixels"], f"{row['lung_fraction']:.6f}", *box])
    return out
