"""Inference-time outputs of a CT classifier that explains itself: split, resize, invert and write them.

A MONAI inference workflow for :class:`medxai.networks.ct_mil.CTMILNet` (issue 4, "Outputs") runs

1. :class:`medxai.engines.inferers.DetailsInferer`: one forward pass returns patient logits, probabilities,
   per-slice scores, per-section probabilities and the EDM class activation maps (seed 003 eq. 1-6);
2. :class:`SplitDetailsd` (postprocessing, per case): ``pred`` becomes the plain patient logits again, as
   ``verify_net_in_out``, metrics and MONAI Label expect; each detail moves to its own key;
3. :class:`ResizeMapToImaged`: the maps (C, h, w, D) at trunk resolution are resized to the preprocessed
   image grid (C, H, W, D) and take the image's metadata and transform trace, so that
4. MONAI's ``Invertd(keys="cams", orig_keys="image", transform=<preprocessing>, nearest_interp=False)``
   undoes the preprocessing (crop to the lungs, slice resizing) and MONAI's ``SaveImaged`` writes the maps
   as NIfTI with the input's affine;
5. :class:`WriteCaseOutputsd`: per case, lesion boxes from the positive class's map as JSON (seed 003
   Sec. 4.1.4, Fig. 13), a summary JSON (probabilities, predicted class, slice scores, section
   probabilities, most suspicious slices, a sentence naming lung zones), and a PNG montage of the most
   suspicious slices with the map and the boxes;
6. at the end, :func:`read_summaries` and :func:`write_predictions_csv`: one CSV row per case.

Case names come from the image file name (``ct_0003.nii.gz`` gives ``ct_0003``); DICOM series and names with
characters outside ``[A-Za-z0-9._-]`` are replaced by :func:`medxai.data.privacy.pseudonym`, and patient
names from the metadata are never used (:func:`output_case_name`).
"""

from __future__ import annotations

from abc import abstractmethod

import csv
import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, ensure_tuple, ensure_tuple_rep

from medxai.data.privacy import pseudonym
from medxai.errors import InputError, MedXAIError
from medxai.explain.boxes import ThresholdMode, boxes_from_map, threshold_map
from medxai.explain.normalize import relu_max
from medxai.explain.text import describe
from medxai.explain.writers import (
    affine_from,
    check_case_name,
    save_json,
    save_map_nifti,
    save_overlay_png,
    top_slices,
)
from medxai.metrics.classification import predicted_classes
from medxai.transforms.checks import case_name as volume_case_name

__all__ = [
    "DEFAULT_DETAILS",
    "CaseOutputWriter",
    "SplitDetailsd",
    "ResizeMapToImaged",
    "output_case_name",
    "WriteCaseOutputsd",
    "read_summaries",
    "write_predictions_csv",
]

#: details of :meth:`CTMILNet.forward_details` that :class:`SplitDetailsd` moves to their own keys by default
DEFAULT_DETAILS = ("patient_probs", "slice_scores", "section_probs", "cams")

#: extensions of single-file image formats whose base name is kept as the case name (DICOM is not among them)
NAMED_IMAGE_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
    ".nhdr",
    ".npy",
    ".npz",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
)

_INTERP_MODES = ("nearest", "nearest-exact", "bilinear", "trilinear", "area")


def _plain_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(value)


# ------------------------------------------------------------------------------------------- split details


class SplitDetailsd(MapTransform):
    """Move a network's intermediate outputs from a dict ``pred`` to their own keys; ``pred`` = the logits.

    Use it as the first postprocessing transform after :class:`medxai.engines.inferers.DetailsInferer`.
    After MONAI decollates the batch, ``data["pred"]`` is one case's dict of tensors (e.g. ``patient_logits``
    (C,), ``cams`` (C, h, w, D)); this transform sets ``data["pred"]`` to ``patient_logits`` and
    ``data[prefix + name]`` to each detail ``name``. A ``pred`` that is not a dict (a plain inferer) passes
    through unchanged, so the same postprocessing works with either inferer.

    Parameters
    ----------
    keys
        Keys holding the network's dict (``"pred"``).
    details
        Names of the entries to move. Entries a network does not produce (``section_probs`` of the pooling
        baselines, ``transition`` without the noise correction module) are skipped unless
        ``allow_missing_details=False``.
    prefix
        Put before each detail's name in its output key, one per key or one for all (e.g. ``"pred_"`` gives
        ``"pred_cams"``). Keys that share a prefix would overwrite each other's details and are refused.
    logits_key
        The entry that becomes the new ``pred``.
    allow_missing_details
        Skip details absent from the dict instead of raising :class:`InputError`.
    allow_missing_keys
        Skip absent ``keys`` instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        details: Sequence[str] = DEFAULT_DETAILS,
        prefix: str | Sequence[str] = "",
        logits_key: str = "patient_logits",
        allow_missing_details: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.details = tuple(ensure_tuple(details))
        self.prefixes = tuple(ensure_tuple_rep(prefix, len(self.keys)))
        if len(set(self.prefixes)) != len(self.prefixes):
            raise InputError(
                f"SplitDetailsd: keys {list(self.keys)} share the prefix(es) {list(self.prefixes)}; give each key its "
                "own prefix so their details do not overwrite each other."
            )
        for key, pre in zip(self.keys, self.prefixes):
            clashes = [f"{pre}{name}" for name in self.details if f"{pre}{name}" in self.keys]
            if clashes:
                raise InputError(f"SplitDetailsd: detail key(s) {clashes} of '{key}' would overwrite input keys.")
        self.logits_key = logits_key
        self.allow_missing_details = allow_missing_details

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, pre in self.key_iterator(d, self.prefixes):
            value = d[key]
            if not isinstance(value, Mapping):
                continue
            if self.logits_key not in value:
                raise InputError(
                    f"SplitDetailsd: '{key}' is a dict without '{self.logits_key}'; it has {sorted(map(str, value))}."
                )
            for name in self.details:
                if name not in value:
                    if self.allow_missing_details:
                        continue
                    raise InputError(
                        f"SplitDetailsd: '{key}' has no detail '{name}'; it has {sorted(map(str, value))}."
                    )
                d[f"{pre}{name}"] = value[name]
            d[key] = value[self.logits_key]
        return d


# ------------------------------------------------------------------------------------------- resize to image


class ResizeMapToImaged(MapTransform):
    """Resize feature-resolution maps (C, h, w, D') to the image's grid (C, H, W, D), with its metadata.

    The EDM maps come at trunk resolution (a ResNet-50: 1/32 of the slice). Upsampling follows the CAM
    convention (Zhou et al., CVPR 2016; seed 003 Fig. 13): linear interpolation with ``align_corners=False``,
    so a map cell's centre lands on the centre of the block of pixels it summarises. The result takes a copy
    of the image's metadata (affine included) and of its transform trace (``applied_operations``), so
    ``Invertd(keys=<map key>, orig_keys=<image key>, transform=<preprocessing>, nearest_interp=False)`` maps it
    back into the original image's geometry and ``SaveImaged`` writes it with the input's affine.

    Parameters
    ----------
    keys
        Keys of maps (C, h, w, D') (e.g. ``"cams"`` from :class:`SplitDetailsd`).
    image_key
        Key of the preprocessed image (C_img, H, W, D), a MetaTensor.
    mode
        ``"trilinear"`` (default; ``"bilinear"`` is the same for a 3D map, and interpolates in-plane only
        when ``D' = D`` since resampling an axis to its own size with ``align_corners=False`` is exact),
        ``"nearest"``, ``"nearest-exact"`` or ``"area"``.
    align_corners
        For the linear modes (``False``: the CAM convention above).
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.

    Returns
    -------
    dict
        ``data[key]``: float32 (C, H, W, D), a MetaTensor when the image is one.
    """

    def __init__(
        self,
        keys: KeysCollection = "cams",
        image_key: str = "image",
        mode: str = "trilinear",
        align_corners: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in _INTERP_MODES:
            raise InputError(f"ResizeMapToImaged: unknown mode '{mode}'; choose one of {', '.join(_INTERP_MODES)}.")
        self.image_key = image_key
        self.mode = "trilinear" if mode == "bilinear" else mode
        self.align_corners = align_corners

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"ResizeMapToImaged: image key '{self.image_key}' not in the data (keys {list(d)}).")
        image = d[self.image_key]
        case = volume_case_name(image)
        if len(image.shape) != 4:
            raise InputError(
                f"case '{case}': ResizeMapToImaged needs a channel-first image (C, H, W, D) under "
                f"'{self.image_key}', got shape {tuple(image.shape)}."
            )
        spatial = tuple(int(s) for s in image.shape[1:])
        for key in self.key_iterator(d):
            d[key] = self._resize(d[key], image, spatial, case, key)
        return d

    def _resize(self, value: Any, image: Any, spatial: tuple[int, ...], case: str, key: Hashable) -> Any:
        if isinstance(value, torch.Tensor):
            maps = value.detach().as_subclass(torch.Tensor)
        else:
            maps = torch.as_tensor(np.asarray(value))
        if maps.ndim != 4:
            raise InputError(
                f"case '{case}': ResizeMapToImaged needs maps (C, h, w, D) under '{key}', got shape {tuple(maps.shape)}."
            )
        linear = self.mode == "trilinear"
        resized = F.interpolate(
            maps[None].float(),
            size=spatial,
            mode=self.mode,
            align_corners=self.align_corners if linear else None,
        )[0]
        if not isinstance(image, MetaTensor):
            return resized
        meta = {k: deepcopy(v) for k, v in image.meta.items() if k != "affine"}
        out = MetaTensor(resized, affine=image.affine.clone(), meta=meta)
        out.applied_operations = deepcopy(image.applied_operations)
        return out


# ------------------------------------------------------------------------------------------------ case name


def _source_of(data: Mapping[Hashable, Any], image_key: str) -> Any:
    image = data.get(image_key)
    source = image.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(image, MetaTensor) else None
    meta_dict = data.get(f"{image_key}_meta_dict")
    if not source and isinstance(meta_dict, Mapping):
        source = meta_dict.get(ImageMetaKey.FILENAME_OR_OBJ)
    if isinstance(source, (list, tuple)):
        source = source[0] if len(source) == 1 else None
    return source


def output_case_name(source: str | PurePath, pseudonymize: bool = False) -> str:
    """The name under which a case's outputs are written, from the file it was loaded from.

    - A single image file (NIfTI, MHA, NRRD, NumPy, PNG/JPEG/TIFF): its base name without the extension,
      ``/data/site/ct_0003.nii.gz`` gives ``ct_0003``, when that is a safe file-name stem
      (:func:`medxai.explain.writers.check_case_name`: ``[A-Za-z0-9._-]``, no ``..``).
    - Such a name with any other character (spaces, accents, brackets: often a patient's name):
      :func:`~medxai.data.privacy.pseudonym` of the base name.
    - A DICOM series (a folder, a ``.dcm`` file, a name without an image extension): pseudonym of the whole
      path, since series folders are named after patients or reuse names such as ``series_1`` across patients.

    Parameters
    ----------
    source
        The image's ``filename_or_obj`` (file or folder path).
    pseudonymize
        Pseudonymise every name (sites whose file names are patient identifiers).

    Returns
    -------
    str
        A safe file-name stem, e.g. ``"ct_0003"`` or ``"pt-1f3a9c0d2b4e"``.
    """
    text = str(source).replace("\\", "/").rstrip("/")
    name = PurePath(text).name
    if not name:
        raise InputError("cannot name a case from an empty file name; pass case_name_fn.")
    lower = name.lower()
    suffix = next((s for s in NAMED_IMAGE_SUFFIXES if lower.endswith(s) and len(name) > len(s)), None)
    if suffix is None:  # DICOM file or series folder
        return pseudonym(text)
    stem = name[: -len(suffix)]
    if pseudonymize:
        return pseudonym(stem)
    try:
        return check_case_name(stem)
    except InputError:
        return pseudonym(stem)


# ------------------------------------------------------------------------------------------------ case writer


def _vector(value: Any, name: str, size: int) -> np.ndarray:
    array = _plain_numpy(value).astype(np.float64).reshape(-1)
    if array.shape[0] != size:
        raise InputError(f"'{name}' must hold {size} values (one per class), got shape {tuple(np.shape(value))}.")
    if not np.all(np.isfinite(array)):
        raise InputError(f"'{name}' holds NaN or infinite values: {array.tolist()}.")
    return array


def _per_class(value: Any, name: str, class_names: Sequence[str]) -> dict[str, list[float]]:
    """A (N, C) table (slices or sections by classes) as ``{class name: N values}``."""
    array = _plain_numpy(value).astype(np.float64)
    if array.ndim != 2 or array.shape[1] != len(class_names):
        raise InputError(f"'{name}' must be (N, {len(class_names)}), got shape {array.shape}.")
    return {cls: array[:, c].tolist() for c, cls in enumerate(class_names)}


def _volume(value: Any, name: str) -> np.ndarray:
    """A single-channel (1, X, Y, Z) or plain (X, Y, Z) volume as (X, Y, Z)."""
    array = _plain_numpy(value)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InputError(f"'{name}' must be a volume (1, X, Y, Z) or (X, Y, Z), got shape {array.shape}.")
    return array


class CaseOutputWriter(Transform):
    """Base of the per-case writers: ``<output_dir>/<case>/`` gets what :meth:`_write` writes, and the summary
    it returns goes into the data under ``summary_key``; any failure is re-raised naming the case (its output
    name, never a patient name) as a :class:`~medxai.errors.MedXAIError`."""

    output_dir: Path
    summary_key: str
    image_key: str
    case_name_fn: Callable[[Mapping[Hashable, Any]], str] | None
    pseudonymize: bool

    def case_name(self, data: Mapping[Hashable, Any]) -> str:
        """The case's output name: ``case_name_fn(data)``, or :func:`output_case_name` of the file the image
        under ``image_key`` was loaded from (pseudonymised with ``pseudonymize``)."""
        if self.case_name_fn is not None:
            return check_case_name(self.case_name_fn(data))
        source = _source_of(data, self.image_key)
        if not source or not isinstance(source, (str, PurePath)):
            raise InputError(
                f"{type(self).__name__}: '{self.image_key}' has no file name (filename_or_obj) to name the case; "
                "load it with LoadImaged or pass case_name_fn."
            )
        return output_case_name(source, self.pseudonymize)

    @abstractmethod
    def _write(self, data: Mapping[Hashable, Any], case: str, folder: Path) -> dict[str, Any]:
        """Write the case's files into ``folder``; return its summary."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = self.case_name(d)
        folder = self.output_dir / case
        try:
            d[self.summary_key] = self._write(d, case, folder)
        except Exception as err:
            kind = type(err) if isinstance(err, MedXAIError) else MedXAIError
            raise kind(f"case '{case}': writing its outputs to {folder} failed: {err}") from err
        return d


class WriteCaseOutputsd(CaseOutputWriter):
    """Write one case's explanation files: lesion boxes, a summary with a sentence, and a PNG montage.

    Apply it per case after the maps were put back into the original image geometry (``Invertd``, see the
    module docstring), so the map, the image and the lung mask share one grid and affine. Under
    ``<output_dir>/<case>/`` it writes

    - ``<case>_boxes.json``: boxes around the connected components of the positive class's map (seed 003
      Sec. 4.1.4, Fig. 13). The map is ReLU'd and scaled to [0, 1] explicitly
      (:func:`medxai.explain.normalize.relu_max`), thresholded (``box_threshold``, ``box_mode``) and boxed
      by :func:`medxai.explain.boxes.boxes_from_map` with the image's affine: voxel corners ``min``/``max``
      (inclusive), world corners ``min_mm``/``max_mm``, volume in mm^3, and ``slice_range``, the first and
      last slice (last axis) of each box;
    - ``<case>_summary.json``: probability per class, predicted class (largest probability), per-slice scores
      (EDM slice logits, seed 003 eq. 3) and per-section probabilities (eq. 6) per class as the network saw
      the slices, the (at most) ``top_slices`` slices with the most map mass, without slices the map does not
      touch (one slice for an empty map), the sentence of
      :func:`medxai.explain.text.describe` for the positive class's probability and the salient part of its
      map, the voxels the boxes keep (a CAM upsampled from a coarse grid spreads faint mass over the whole
      body; the sentence names where the map is high, as the boxes do), with the lung mask (the same map as
      the boxes and the overlay, whatever the predicted class), and the boxes;
    - ``<case>_overlay.png``: the top slices with the normalised map and the boxes
      (:func:`medxai.explain.writers.render_montage`), one image pixel per PNG pixel;
    - with ``save_map``, ``<case>_map.nii.gz``: the positive class's raw map with the image's affine (when
      the workflow does not save the maps with ``SaveImaged`` already).

    Parameters
    ----------
    output_dir
        Root folder; each case gets a subfolder.
    image_key, map_key, lung_key
        Keys of the image (1, X, Y, Z), the class maps (C, X, Y, Z) and the lung mask (1, X, Y, Z; labelled
        1 right / 2 left, or binary, see :mod:`medxai.explain.anatomy`; invert it with nearest interpolation).
        The image is what the PNG shows: the loaded image kept aside before preprocessing (``CopyItemsd``)
        shows the whole scan, the inverted preprocessed image only the crop (zeros around it).
    probs_key
        Key of the class probabilities (C,) (``"patient_probs"`` from :class:`SplitDetailsd`; ``"pred"`` after
        ``Activationsd``).
    slice_scores_key, section_probs_key
        Keys of (D, C) slice scores and (S, C) section probabilities, reported when present.
    class_names
        One name per class, in the network's output order.
    positive_class
        Index of the class whose map gives the boxes, overlay and sentence (COVID-19).
    decision_threshold
        The predicted class is decided as evaluation decides it
        (:func:`medxai.metrics.classification.predicted_classes`): with two classes, ``positive_class`` when its
        probability is ``>= decision_threshold`` (the section-integrated probabilities of the two classes are
        separate numbers that need not sum to 1, so their argmax can disagree with the reported metrics); with
        more classes, the argmax.
    method
        Explainer name for the sentence (``"edm"``: "the EDM activation map").
    top_slices
        Most slices in the montage.
    box_threshold, box_mode, box_min_size
        Passed to :func:`~medxai.explain.boxes.boxes_from_map` (on the [0, 1] normalised map).
    image_range
        Intensities shown black and white in the PNG (e.g. a lung window ``(-1000, 400)`` for an image in
        HU); default: the volume's minimum and maximum.
    save_map
        Also write the positive class's map as NIfTI.
    case_name_fn
        ``case_name_fn(data) -> str``, a safe file-name stem; default: :func:`output_case_name` of the image's
        ``filename_or_obj``.
    pseudonymize
        With the default naming, pseudonymise every case name.
    summary_key
        Key under which the summary dict is added to the returned data.

    Raises
    ------
    MedXAIError
        Naming the case (its output name, never a patient name) when any output of the case fails.
    """

    def __init__(
        self,
        output_dir: str | Path,
        image_key: str = "image",
        map_key: str = "cams",
        lung_key: str = "lung_mask",
        probs_key: str = "patient_probs",
        slice_scores_key: str | None = "slice_scores",
        section_probs_key: str | None = "section_probs",
        class_names: Sequence[str] = ("non-COVID-19", "COVID-19"),
        positive_class: int = 1,
        method: str = "edm",
        top_slices: int = 4,
        box_threshold: float = 0.5,
        box_mode: ThresholdMode = "relative",
        box_min_size: int = 1,
        image_range: Sequence[float] | None = None,
        save_map: bool = False,
        case_name_fn: Callable[[Mapping[Hashable, Any]], str] | None = None,
        pseudonymize: bool = False,
        summary_key: str = "summary",
        decision_threshold: float = 0.5,
    ) -> None:
        self.class_names = tuple(str(c) for c in class_names)
        if len(self.class_names) < 1 or len(set(self.class_names)) != len(self.class_names):
            raise InputError(f"WriteCaseOutputsd: class_names must be distinct and non-empty, got {list(class_names)}.")
        if not 0.0 <= float(decision_threshold) <= 1.0:
            raise InputError(f"WriteCaseOutputsd: decision_threshold must be in [0, 1], got {decision_threshold}.")
        self.decision_threshold = float(decision_threshold)
        if not 0 <= int(positive_class) < len(self.class_names):
            raise InputError(
                f"WriteCaseOutputsd: positive_class {positive_class} is outside [0, {len(self.class_names)})."
            )
        if int(top_slices) < 1:
            raise InputError(f"WriteCaseOutputsd: top_slices must be >= 1, got {top_slices}.")
        if image_range is not None and (len(image_range) != 2 or not float(image_range[0]) < float(image_range[1])):
            raise InputError(f"WriteCaseOutputsd: image_range must be (low, high) with low < high, got {image_range}.")
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.map_key = map_key
        self.lung_key = lung_key
        self.probs_key = probs_key
        self.slice_scores_key = slice_scores_key
        self.section_probs_key = section_probs_key
        self.positive_class = int(positive_class)
        self.method = method
        self.top_slices = int(top_slices)
        self.box_threshold = float(box_threshold)
        self.box_mode = box_mode
        self.box_min_size = int(box_min_size)
        self.image_range = None if image_range is None else (float(image_range[0]), float(image_range[1]))
        self.save_map = save_map
        self.case_name_fn = case_name_fn
        self.pseudonymize = pseudonymize
        self.summary_key = summary_key

    def _require(self, data: Mapping[Hashable, Any], key: str | None) -> Any:
        if key is None or key not in data:
            raise InputError(f"key '{key}' is missing; the data has {sorted(map(str, data))}.")
        return data[key]

    def _table(self, data: Mapping[Hashable, Any], key: str | None) -> dict[str, list[float]] | None:
        """A (N, C) table under ``key`` as ``{class name: N values}``; ``None`` when not configured or absent."""
        if key is None or data.get(key) is None:
            return None
        return _per_class(data[key], key, self.class_names)

    def _geometry(self, maps: Any, image: Any) -> np.ndarray:
        """The RAS affine shared by the map and the image (refused when they disagree or have none)."""
        image_affine = affine_from(image)
        map_affine = affine_from(maps)
        if image_affine is None and map_affine is None:
            raise InputError(
                f"neither '{self.image_key}' nor '{self.map_key}' carries an affine; pass MetaTensors (LoadImaged)."
            )
        if image_affine is not None and map_affine is not None and not np.allclose(image_affine, map_affine, atol=1e-3):
            raise InputError(
                f"'{self.map_key}' and '{self.image_key}' have different affines; invert the map into the image's "
                f"geometry first (Invertd). Map affine {np.round(map_affine, 3).tolist()}, image affine "
                f"{np.round(image_affine, 3).tolist()}."
            )
        return image_affine if image_affine is not None else map_affine  # type: ignore[return-value]

    def _write(self, d: Mapping[Hashable, Any], case: str, folder: Path) -> dict[str, Any]:
        names = self.class_names
        maps = self._require(d, self.map_key)
        image = self._require(d, self.image_key)
        lung = self._require(d, self.lung_key)
        probs = _vector(self._require(d, self.probs_key), self.probs_key, len(names))
        map_array = _plain_numpy(maps).astype(np.float64)
        if map_array.ndim != 4 or map_array.shape[0] != len(names):
            raise InputError(
                f"'{self.map_key}' must be (C, X, Y, Z) with C = {len(names)} classes, got shape {map_array.shape}."
            )
        volume = _volume(image, self.image_key)
        lung_mask = np.rint(_volume(lung, self.lung_key)).astype(np.int16)
        if not (volume.shape == lung_mask.shape == map_array.shape[1:]):
            raise InputError(
                f"'{self.map_key}' {map_array.shape[1:]}, '{self.image_key}' {volume.shape} and '{self.lung_key}' "
                f"{lung_mask.shape} must share one grid; invert the map into the image's geometry first (Invertd)."
            )
        affine = self._geometry(maps, image)

        positive = map_array[self.positive_class]
        normalised = relu_max(positive[None, None])[0, 0]
        boxes = boxes_from_map(normalised, self.box_threshold, self.box_mode, self.box_min_size, affine=affine)
        for box in boxes:
            box["slice_range"] = [box["min"][-1], box["max"][-1]]
        slice_range = [min(b["min"][-1] for b in boxes), max(b["max"][-1] for b in boxes)] if boxes else None
        mass = normalised.sum(axis=(0, 1))
        ranked = top_slices(normalised, self.top_slices)
        chosen_slices = [i for i in ranked if mass[i] > 0] or ranked[:1]
        positive_name = names[self.positive_class]
        # the sentence describes where the boxes are: the salient part of the map, not its faint spread
        salient, _ = threshold_map(normalised, self.box_threshold, self.box_mode)
        focus = np.where(salient, normalised, 0.0)
        text = describe(
            focus, lung_mask, positive_name, float(probs[self.positive_class]), self.method, mask_kwargs={"affine": affine}
        )
        predicted = int(predicted_classes(probs[None], self.decision_threshold, names, self.positive_class)[0])

        box_record = {
            "case": case,
            "class": positive_name,
            "normalisation": "relu_max",
            "threshold": self.box_threshold,
            "threshold_mode": self.box_mode,
            "min_size": self.box_min_size,
            "affine": affine,
            "slice_range": slice_range,
            "boxes": boxes,
        }
        files = {
            "boxes": f"{case}_boxes.json",
            "summary": f"{case}_summary.json",
            "overlay": f"{case}_overlay.png",
        }
        if self.save_map:
            files["map"] = f"{case}_map.nii.gz"
        summary = {
            "case": case,
            "class_names": list(names),
            "probabilities": {name: float(p) for name, p in zip(names, probs)},
            "predicted_class": names[predicted],
            "predicted_index": predicted,
            "positive_class": positive_name,
            "slice_scores": self._table(d, self.slice_scores_key),
            "section_probabilities": self._table(d, self.section_probs_key),
            "top_slices": chosen_slices,
            "sentence": text.sentence,
            "explanation": text.as_dict(),
            "boxes": boxes,
            "slice_range": slice_range,
            "shape": list(volume.shape),
            "files": files,
        }
        save_json(box_record, folder, case, suffix="_boxes")
        save_json(summary, folder, case, suffix="_summary")
        overlay_kwargs: dict[str, Any] = {"slices": chosen_slices}
        if self.image_range is not None:
            overlay_kwargs["image_range"] = self.image_range
        save_overlay_png(volume, normalised, folder, case, boxes=boxes, suffix="_overlay", **overlay_kwargs)
        if self.save_map:
            save_map_nifti(positive.astype(np.float32), folder, case, affine=affine, suffix="_map")
        return summary


# ---------------------------------------------------------------------------------------------- CSV table


def read_summaries(output_dir: str | Path, suffix: str = "_summary.json") -> list[dict[str, Any]]:
    """Every ``<output_dir>/<case>/<case><suffix>`` written by :class:`WriteCaseOutputsd`, sorted by case.

    Reading the files back (rather than collecting rows in memory) gives one table after a multi-GPU run,
    where every rank wrote its own cases.
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise InputError(f"output folder {root} does not exist.")
    summaries = []
    for path in sorted(root.glob(f"*/*{suffix}")):
        if path.name != f"{path.parent.name}{suffix}":
            continue
        try:
            summaries.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise InputError(f"summary {path.name} of case '{path.parent.name}' is not valid JSON: {err}.") from err
    return sorted(summaries, key=lambda s: str(s.get("case", "")))


def write_predictions_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """One CSV row per case from :class:`WriteCaseOutputsd` summaries.

    Columns: ``case``, ``predicted_class``, ``probability_<class>`` for each class (in the first summary's
    class order), ``num_boxes``, ``top_slices`` (space-separated) and ``sentence``. Written with
    :mod:`csv` rather than MONAI's ``CSVSaver``/``ClassificationSaver``, which write no header, only numbers,
    and use the image's full ``filename_or_obj`` path as the row name (a patient's name for many DICOM
    folders).

    Returns
    -------
    Path
        ``path``.
    """
    rows = list(rows)
    if not rows:
        raise InputError(f"no cases to write to {path}; run inference first.")
    class_names = list(rows[0]["probabilities"])
    columns = ["case", "predicted_class", *[f"probability_{c}" for c in class_names], "num_boxes", "top_slices",
               "sentence"]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            case = row.get("case", "<unnamed>")
            probabilities = row.get("probabilities", {})
            if list(probabilities) != class_names:
                raise InputError(
                    f"case '{case}' has classes {list(probabilities)}, the first case {class_names}; one table "
                    "needs one set of classes."
                )
            writer.writerow(
                {
                    "case": case,
                    "predicted_class": row["predicted_class"],
                    **{f"probability_{c}": repr(float(probabilities[c])) for c in class_names},
                    "num_boxes": len(row.get("boxes", [])),
                    "top_slices": " ".join(str(i) for i in row.get("top_slices", [])),
                    "sentence": row.get("sentence", ""),
                }
            )
    return out
