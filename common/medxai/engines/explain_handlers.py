"""Post-hoc explanations of a CT MIL evaluation: superpixel LIME/Kernel SHAP of the top slices, and t-SNE.

Two ignite handlers for MONAI evaluators running :class:`~medxai.networks.ct_mil.CTMILNet` (the CT MIL
bundle's ``explain.json``):

- :class:`SuperpixelExplanationHandler`: for every case, the ``top_k`` slices with the highest slice score
  of the positive class are explained over SLIC superpixels by LIME (seed 000 sec. 3.3, eq. 7, Fig. 3) and
  Kernel SHAP (sec. 3.4, eq. 8, Fig. 4), through :mod:`medxai.explain` and
  :class:`~medxai.networks.slice_scorer.SliceScorer`, i.e. explaining the slice score that feeds the slice
  integration module. Writes a PNG overlay per method and slice and one JSON per case.
- :class:`FeatureEmbeddingHandler`: the per-slice trunk features of every case, embedded in 2D by t-SNE
  (and/or PCA) and plotted coloured by the case label and marked by the acquisition centre, as seed 003
  Fig. 14 shows them; PNG and CSV per method.

Case names come from the image file names (:func:`medxai.engines.handlers.case_name_of`, optionally
pseudonymised), never from patient fields of the datalist.

Long explanation jobs are fault tolerant and resumable (:class:`CaseProgress`): a case whose explanation
fails with a data problem (a :data:`medxai.data.fault_tolerant.CASE_ERRORS` error) is recorded in the run's
errors file with its name and reason and the job goes on; a case whose JSON (written last, atomically) is on
disk from an earlier run with the same settings, network weights and input is not recomputed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from skimage.segmentation import find_boundaries

from medxai.data.fault_tolerant import (
    CASE_ERRORS,
    BadCase,
    BadCaseLog,
    as_bad_case_log,
    case_source,
    describe_case_error,
    find_case_error,
)
from medxai.engines.case_metrics import _PerCaseHandler
from medxai.engines.handlers import _as_items, _label_index, case_name_of
from medxai.engines.inferers import unwrap_network
from medxai.errors import DatasetError, InputError
from medxai.explain.embedding import embed, plot_embedding
from medxai.explain.perturbation import batched_forward, model_device
from medxai.explain import create_explainer
from medxai.explain.superpixels import SlicSuperpixels, SuperpixelExplainer, SuperpixelExplanation
from medxai.explain.writers import check_case_name, render_overlay, save_json, save_png, to_jsonable
from medxai.networks.slice_scorer import SliceScorer

__all__ = [
    "SuperpixelExplanationHandler",
    "FeatureEmbeddingHandler",
    "CaseProgress",
    "CaseCounts",
    "tensor_digest",
    "network_digest",
    "top_scoring_slices",
    "even_slices",
    "superpixel_summary",
    "evaluation_mode",
]

SLICE_SELECTIONS = ("even", "top")
EMBEDDING_METHODS = ("tsne", "pca")


def _tensor(value: Any) -> torch.Tensor:
    """A plain float tensor on the CPU from a (Meta)Tensor or array."""
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.as_subclass(torch.Tensor).detach().float().cpu()


def tensor_digest(*values: Any) -> str:
    """SHA-256 (hex) of tensors/arrays (``None`` allowed): dtype, shape and bytes of each, in order.

    Identical inputs give the same digest on every run; it tells a resumed job whether a case's stored
    explanation was made from the same data.
    """
    digest = hashlib.sha256()
    for value in values:
        if value is None:
            digest.update(b"none;")
            continue
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        array = tensor.as_subclass(torch.Tensor).detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def network_digest(module: nn.Module) -> str:
    """SHA-256 (hex) of a network's state dict (names, dtypes, shapes and values of parameters and buffers):
    a resumed job reuses explanations only of the weights that made them."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode() + b"=")
        digest.update(tensor_digest(value).encode() if isinstance(value, torch.Tensor) else repr(value).encode())
    return digest.hexdigest()


def _plain_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples become lists, numpy scalars numbers, ...)."""
    return json.loads(json.dumps(to_jsonable(value)))


class CaseProgress:
    """Book-keeping of a per-case explanation handler: failed cases (recorded, job goes on), reused cases.

    Parameters
    ----------
    owner
        Name of the handler in log lines.
    bad_case_log
        A :class:`~medxai.data.fault_tolerant.BadCaseLog` (shared with the run's loaders), a path for a log of
        its own, or ``None`` (failures are only logged and kept in :attr:`failed`).
    skip_failed_cases
        ``False``: a case error propagates and stops the run (the behaviour before fault tolerance).
    case_errors
        Exception types (searched along the ``__cause__`` chain) that mark a data problem of the case; any
        other exception is a programming error and propagates.
    """

    def __init__(
        self,
        owner: str,
        bad_case_log: BadCaseLog | str | Path | None = None,
        skip_failed_cases: bool = True,
        case_errors: Sequence[type[BaseException]] = CASE_ERRORS,
    ) -> None:
        self.owner = owner
        self.bad_case_log = as_bad_case_log(bad_case_log)
        self._source = None if self.bad_case_log is None else self.bad_case_log.new_source("explanation")
        self.skip_failed_cases = bool(skip_failed_cases)
        self.case_errors = tuple(case_errors)
        self.logger = logging.getLogger(__name__)
        self.reset()

    def reset(self) -> None:
        """Zero the counts (at the start of an epoch)."""
        self.computed = 0
        self.reused = 0
        self.failed: list[BadCase] = []

    def check(self, exc: BaseException) -> BaseException:
        """The case error inside ``exc`` (see :func:`~medxai.data.fault_tolerant.find_case_error`); ``exc`` itself
        is re-raised when it is a programming error or skipping is off. Call it inside the ``except`` block."""
        cause = find_case_error(exc, self.case_errors)
        if cause is None or not self.skip_failed_cases:
            raise exc
        return cause

    def failure(self, exc: BaseException, name: str, source: str | None = None) -> None:
        """Record case ``name``'s error ``exc`` if it is a case error (and skipping is on), else re-raise it.

        The message is one line; ``source`` (the case's file) and its file name are replaced by ``name`` in it.
        Call it from inside the ``except`` block.
        """
        cause = self.check(exc)
        message = describe_case_error(cause, name, source)
        self.failed.append(BadCase(index=len(self.failed), case=name, error=message))
        self.logger.warning("%s: case %s failed, skipped: %s", self.owner, name, message)
        if self.bad_case_log is not None:
            self.bad_case_log.add(self._source, name, message)

    def summarize(self, _engine: Engine | None = None) -> None:
        """Log the counts; raise :class:`~medxai.errors.DatasetError` when every case failed."""
        where = f" (listed in {self.bad_case_log.path})" if self.bad_case_log is not None else ""
        self.logger.info(
            "%s: %d case(s) computed, %d reused from an earlier run with the same settings, %d failed%s.",
            self.owner, self.computed, self.reused, len(self.failed), where if self.failed else "",
        )  # fmt: skip
        if self.failed and self.computed + self.reused == 0:
            first = self.failed[0]
            raise DatasetError(
                f"{self.owner}: all {len(self.failed)} case(s) failed, nothing explained; first: {first.case}: "
                f"{first.error}"
            )


class CaseCounts:
    """The counts of a handler's :class:`CaseProgress` (``self.progress``) as properties."""

    progress: CaseProgress

    @property
    def cases_reused(self) -> int:
        """Cases of the current epoch taken from an earlier run's outputs."""
        return self.progress.reused

    @property
    def cases_computed(self) -> int:
        """Cases of the current epoch explained in this run."""
        return self.progress.computed

    @property
    def failed_cases(self) -> list[BadCase]:
        """Cases of the current epoch whose explanation failed, with the reason."""
        return list(self.progress.failed)


def _read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is absent or unreadable (then the case is recomputed)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _batch_items(engine: Engine) -> list[Mapping[str, Any]]:
    """``engine.state.batch`` as per-sample dicts (MONAI keeps datalist fields such as ``centre`` there),
    or ``[]`` when the batch is not dict-based."""
    try:
        return _as_items(getattr(engine.state, "batch", None), "batch")
    except InputError:
        return []


def _cases(engine: Engine, image_key: str, pseudonymize: bool) -> list[tuple[dict[str, Any], str | None]]:
    """Per case of the iteration: the batch item's keys overlaid by the output item's (outputs win on shared
    keys), and the case name of the output's image, else of the batch's (:func:`case_name_of`)."""
    outputs = _as_items(engine.state.output, "output")
    batch = _batch_items(engine)
    cases = []
    for index, item in enumerate(outputs):
        source = batch[index] if index < len(batch) else {}
        name = case_name_of(item, image_key, pseudonymize) or case_name_of(source, image_key, pseudonymize)
        cases.append(({**source, **item}, name))
    return cases


def _case_scores(value: Any, class_index: int, case: str, key: str) -> torch.Tensor:
    """Class ``class_index`` column of one case's slice scores (D, C); scores (D,) are taken as that class's."""
    scores = _tensor(value)
    if scores.ndim == 2 and 0 <= class_index < scores.shape[1]:
        return scores[:, class_index]
    if scores.ndim == 1:
        return scores
    raise InputError(
        f"case {case}: '{key}' must be slice scores (D, C) with C > {class_index} (or (D,)), got "
        f"shape {tuple(scores.shape)}."
    )


def top_scoring_slices(scores: torch.Tensor | np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` highest slice scores (D,), highest first; ties keep the lower index first."""
    values = _tensor(scores).flatten()
    if values.numel() == 0:
        raise InputError("top_scoring_slices got no slice scores.")
    count = max(1, min(int(count), values.numel()))
    return [int(i) for i in torch.argsort(values, descending=True, stable=True)[:count]]


def even_slices(num_slices: int, count: int | None) -> list[int]:
    """``count`` slice indices spread evenly over ``range(num_slices)`` (first and last included), ascending.

    ``count=None`` (or ``>= num_slices``) keeps every slice: ``even_slices(6, 4) == [0, 2, 3, 5]``.
    """
    if num_slices < 1:
        raise InputError(f"even_slices needs at least one slice, got {num_slices}.")
    if count is None or count >= num_slices:
        return list(range(num_slices))
    if count < 1:
        raise InputError(f"the number of slices to keep must be >= 1, got {count}.")
    return sorted({int(i) for i in np.round(np.linspace(0, num_slices - 1, count)).astype(int)})


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` and all its sub-modules in ``eval`` mode for the block, then restore each one's mode.

    Perturbation explainers score hundreds of perturbed copies of one slice; in ``train`` mode BatchNorm
    would normalise them by their own batch statistics and overwrite the running statistics.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes:
            sub.training = training


def superpixel_summary(
    explanation: SuperpixelExplanation, index: int = 0, count: int = 5
) -> tuple[list[float], list[int], list[dict[str, Any]]]:
    """Weights, areas and the ``count`` most positive superpixels of sample ``index`` of an explanation.

    Returns
    -------
    weights
        (M,) per-superpixel weights, label order.
    areas
        (M,) pixels per superpixel.
    top
        Up to ``count`` dicts ``{"label", "weight", "area", "centroid"}`` (centroid in voxel coordinates of the
        spatial axes), most positive weight first; superpixels with a weight <= 0 are not listed (seed 000
        highlights "the super-pixels with positive weights").
    """
    weights = explanation.weights[index].double()
    segments = explanation.segments[index].cpu()
    num = weights.numel()
    flat = segments.reshape(-1)
    areas = torch.bincount(flat, minlength=num)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in segments.shape], indexing="ij")
    centroids = torch.stack(
        [torch.zeros(num, dtype=torch.float64).index_add_(0, flat, g.reshape(-1)) for g in grids], dim=1
    ) / areas.clamp(min=1)[:, None]
    top = []
    for label in explanation.ranking(index)[: max(0, int(count))].tolist():
        if float(weights[label]) <= 0.0:
            break
        top.append(
            {
                "label": int(label),
                "weight": float(weights[label]),
                "area": int(areas[label]),
                "centroid": [round(float(c), 3) for c in centroids[label]],
            }
        )
    return weights.tolist(), areas.tolist(), top


class SuperpixelExplanationHandler(CaseCounts):
    """LIME and Kernel SHAP on superpixels of each case's most suspicious slices (seed 000 Figs. 3-4).

    At every ITERATION_COMPLETED of an evaluator, for every case of ``engine.state.output`` (MONAI's
    decollated list of dicts, or a batch-first dict):

    1. the slice scores of class ``class_index`` are read from ``output[scores_key]`` (D, C) (the
       :class:`~medxai.engines.inferers.DetailsInferer` output; computed with the network when absent) and
       the ``top_k`` slices with the highest score are kept (:func:`top_scoring_slices`);
    2. each kept slice ``image[:, :, :, z]`` (MONAI's (C, H, W, D) layout, slices on the last axis, as
       :class:`~medxai.networks.ct_mil.CTMILNet` reads them) is segmented once by SLIC
       (:class:`~medxai.explain.superpixels.SlicSuperpixels`), so all methods share its superpixels, and
       explained by each method through :func:`medxai.explain.create_explainer` on a
       :class:`~medxai.networks.slice_scorer.SliceScorer`: the explained score is
       ``sigmoid(s_c)`` of the slice (``output="probability"``) or ``s_c`` (``"logit"``);
    3. written to ``<output_dir>/<case>/``: ``<case>_<method>_slice<z>.png``, the slice with the positive
       superpixel weights blended over it (the explainer's map (1, H, W): every pixel carries its
       superpixel's weight; colour scale from 0 to the largest weight, negative weights not coloured) and
       the top superpixels outlined; and ``<case>_superpixels.json`` with, per method and slice, the slice
       index and rank, its score, the explained score, the per-superpixel weights and areas, the top
       superpixels and the runtime.

    The explainers are built once; the network is put in ``eval`` mode while explaining and restored
    afterwards (:func:`evaluation_mode`). The work is ``top_k * len(methods) * num_samples`` slice forward
    passes per case in batches of ``batch_size``: limit ``max_cases`` for large test sets.

    Fault tolerance and resuming: a case whose explanation raises a case error (``InputError``, ... ; see
    :class:`CaseProgress`) is logged, recorded in ``bad_case_log`` with its name and reason, and the next case
    is explained. The JSON is written last and atomically, with a ``provenance`` entry (all settings, the
    SHA-256 of the network's weights and of the case's input volume): with ``resume`` a case whose JSON and
    overlays are on disk with the same provenance is not recomputed (``cases reused`` in the log at the end
    of each epoch); any difference recomputes it. An evaluation in which every case failed ends with a
    :class:`~medxai.errors.DatasetError`.

    Parameters
    ----------
    output_dir
        Folder of the per-case folders.
    methods
        Registered superpixel explainers (``"lime"``, ``"kernel_shap"``).
    top_k
        Slices explained per case (fewer when a volume has fewer slices).
    num_samples
        Perturbations per explanation (LIME samples, Kernel SHAP coalitions).
    n_segments
        SLIC superpixels requested per slice (SLIC returns about that many).
    class_index
        Class whose slice score selects and is explained (1: COVID-19 in the CT MIL bundle).
    image_key, scores_key
        Keys of the input volume (C, H, W, D) and of the slice scores (D, C) in the output.
    network
        The :class:`~medxai.networks.ct_mil.CTMILNet` of the evaluator (wrappers are unwrapped).
    batch_size
        Perturbed slices per forward pass.
    seed
        Perturbation seed: the same seed and inputs give the same weights.
    baseline
        What a switched-off superpixel shows (:func:`medxai.explain.superpixels.baseline_image`):
        ``"mean"`` (its own mean, ``lime_image``'s default), ``"blur"``, ``"zero"`` or a number.
    output
        ``"probability"`` or ``"logit"``: the explained score.
    explainer_kwargs
        Extra constructor arguments per method, e.g. ``{"lime": {"alpha": 0.001}}``.
    segmenter_kwargs
        Extra arguments of :class:`~medxai.explain.superpixels.SlicSuperpixels` (``compactness``, ``sigma``).
    num_top_superpixels
        Top (positive) superpixels listed in the JSON and outlined in the PNG (0: none outlined).
    max_cases
        Explain at most this many cases per epoch (``None``: all).
    pseudonymize
        Replace file-name case names by :func:`medxai.data.privacy.pseudonym`.
    cmap, alpha, outline_color
        Overlay colour map, opacity and the RGB colour of the top superpixels' outlines.
    resume
        Reuse the complete outputs of an earlier run with the same provenance (default). ``False``:
        recompute every case.
    bad_case_log
        Where failed cases are recorded: a :class:`~medxai.data.fault_tolerant.BadCaseLog` shared with the
        run's data loader (``bad_cases.json`` of the output folder), a path, or ``None`` (logged only).
    skip_failed_cases
        ``False``: the first failing case stops the run.
    """

    def __init__(
        self,
        output_dir: str | Path,
        methods: Sequence[str] = ("lime", "kernel_shap"),
        top_k: int = 3,
        num_samples: int = 1000,
        n_segments: int = 50,
        class_index: int = 1,
        image_key: str = "image",
        scores_key: str = "slice_scores",
        network: nn.Module | None = None,
        batch_size: int = 64,
        seed: int = 0,
        baseline: float | str = "mean",
        output: str = "probability",
        explainer_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        segmenter_kwargs: Mapping[str, Any] | None = None,
        num_top_superpixels: int = 5,
        max_cases: int | None = None,
        pseudonymize: bool = False,
        cmap: str = "jet",
        alpha: float = 0.5,
        outline_color: Sequence[int] = (255, 255, 0),
        resume: bool = True,
        bad_case_log: BadCaseLog | str | Path | None = None,
        skip_failed_cases: bool = True,
    ) -> None:
        if network is None:
            raise InputError("SuperpixelExplanationHandler needs the evaluator's network (network=@network).")
        if isinstance(methods, str):
            methods = (methods,)
        if not methods or len(set(methods)) != len(methods):
            raise InputError(f"methods must be a non-empty list of distinct explainer names, got {list(methods)}.")
        if int(top_k) < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}.")
        if int(num_top_superpixels) < 0:
            raise InputError(f"num_top_superpixels must be >= 0, got {num_top_superpixels}.")
        if max_cases is not None and int(max_cases) < 0:
            raise InputError(f"max_cases must be >= 0 or None, got {max_cases}.")
        unknown = set(explainer_kwargs or {}) - set(methods)
        if unknown:
            raise InputError(f"explainer_kwargs names method(s) {sorted(unknown)} not in methods {list(methods)}.")
        self.output_dir = Path(output_dir)
        self.methods = [str(m).lower() for m in methods]
        self.top_k = int(top_k)
        self.num_samples = int(num_samples)
        self.n_segments = int(n_segments)
        self.class_index = int(class_index)
        self.image_key = image_key
        self.scores_key = scores_key
        self.network = unwrap_network(network)
        self.scorer = SliceScorer(self.network, class_index=self.class_index)
        self.segmenter = SlicSuperpixels(n_segments=self.n_segments, **dict(segmenter_kwargs or {}))
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.baseline = baseline
        self.output = output
        self.num_top_superpixels = int(num_top_superpixels)
        self.max_cases = None if max_cases is None else int(max_cases)
        self.pseudonymize = pseudonymize
        self.cmap = cmap
        self.alpha = float(alpha)
        self.outline_color = np.asarray(outline_color, dtype=np.uint8)
        if not isinstance(resume, bool):  # a command-line "false" would otherwise be truthy
            raise InputError(f"resume must be true or false, got {resume!r}.")
        self.resume = resume
        self.progress = CaseProgress(type(self).__name__, bad_case_log, skip_failed_cases)
        self._settings = _plain_json({
            "methods": self.methods, "top_k": self.top_k, "num_samples": self.num_samples,
            "n_segments": self.n_segments, "segmenter_kwargs": dict(segmenter_kwargs or {}),
            "class_index": self.class_index, "image_key": image_key, "scores_key": scores_key,
            "batch_size": self.batch_size, "seed": self.seed, "baseline": baseline, "output": output,
            "explainer_kwargs": {m: dict(v) for m, v in (explainer_kwargs or {}).items()},
            "num_top_superpixels": self.num_top_superpixels, "cmap": cmap, "alpha": self.alpha,
            "outline_color": self.outline_color.tolist(),
        })  # fmt: skip
        self._network_digest: str | None = None
        self.explainers: dict[str, SuperpixelExplainer] = {}
        for method in self.methods:
            kwargs: dict[str, Any] = dict(
                segmenter=self.segmenter, baseline=baseline, num_samples=self.num_samples, output=output,
                batch_size=self.batch_size, seed=self.seed,
            )
            kwargs.update((explainer_kwargs or {}).get(method, {}))
            try:
                explainer = create_explainer(method, self.scorer, **kwargs)
            except TypeError as error:  # e.g. a CAM method: no segmenter/num_samples arguments
                raise InputError(
                    f"method '{method}' is not a superpixel explainer ('lime', 'kernel_shap'): {error}"
                ) from error
            if not isinstance(explainer, SuperpixelExplainer):
                raise InputError(
                    f"method '{method}' is not a superpixel explainer ({type(explainer).__name__}); use 'lime' or "
                    "'kernel_shap'."
                )
            self.explainers[method] = explainer
        self.cases_done = 0
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Reset the case count at EPOCH_STARTED, explain at every ITERATION_COMPLETED of ``engine`` and log the
        counts of computed, reused and failed cases at EPOCH_COMPLETED."""
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.progress.summarize, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.progress.summarize)

    def reset(self, _engine: Engine | None = None) -> None:
        """Start counting cases (for ``max_cases`` and unnamed cases) from zero."""
        self.cases_done = 0
        self.progress.reset()
        self._network_digest = None  # the weights may have been (re)loaded since the last epoch

    def __call__(self, engine: Engine) -> None:
        """Explain every case of the current iteration (up to ``max_cases`` per epoch), reusing complete
        outputs of an earlier run and recording failed cases."""
        for item, name in _cases(engine, self.image_key, self.pseudonymize):
            if self.max_cases is not None and self.cases_done >= self.max_cases:
                return
            if name is None:  # unnamed cases are numbered per rank, so ranks never write the same folder
                rank = "" if idist.get_world_size() == 1 else f"r{idist.get_rank()}-"
                name = f"case-{rank}{self.cases_done:05d}"
            try:
                provenance = self.provenance(item, name)
                if self.resume and self.completed_record(name, provenance) is not None:
                    self.progress.reused += 1
                else:
                    self.explain_case(item, name, provenance)
                    self.progress.computed += 1
            except Exception as exc:
                self.progress.failure(exc, name, case_source(item, self.image_key))
            self.cases_done += 1

    def json_path(self, name: str) -> Path:
        """``<output_dir>/<case>/<case>_superpixels.json``, written last: its presence marks a finished case."""
        return self.output_dir / check_case_name(name) / f"{name}_superpixels.json"

    def provenance(self, item: Mapping[str, Any], name: str) -> dict[str, Any]:
        """What a case's explanation depends on: all settings, and SHA-256 of the network's weights and of the
        case's input volume. A stored JSON is reused only when its ``provenance`` equals this."""
        if self._network_digest is None:
            self._network_digest = network_digest(self.network)
        return {
            "settings": self._settings,
            "network_sha256": self._network_digest,
            "input_sha256": tensor_digest(self._volume(item, name)),
        }

    def completed_record(self, name: str, provenance: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored JSON record of case ``name`` when it is complete (readable, every overlay PNG present)
        and was made with ``provenance``; else ``None``."""
        path = self.json_path(name)
        record = _read_record(path)
        if record is None or record.get("provenance") != _plain_json(provenance):
            return None
        methods = record.get("methods")
        if not isinstance(methods, dict) or sorted(methods) != sorted(self.methods):
            return None
        for entries in methods.values():
            for entry in entries if isinstance(entries, list) else [None]:
                overlay = entry.get("overlay") if isinstance(entry, dict) else None
                if not isinstance(overlay, str) or not (path.parent / overlay).is_file():
                    return None
        return record

    def _volume(self, item: Mapping[str, Any], name: str) -> torch.Tensor:
        if self.image_key not in item:
            raise InputError(f"case {name}: no key '{self.image_key}' in the output; it has {sorted(map(str, item))}.")
        value = item[self.image_key]
        volume = value.as_subclass(torch.Tensor).detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if volume.ndim != 4 or volume.shape[0] != self.scorer.in_channels or volume.shape[-1] < 1:
            raise InputError(
                f"case {name}: '{self.image_key}' must be a volume ({self.scorer.in_channels}, H, W, D) with slices on "
                f"the last axis, got shape {tuple(volume.shape)}."
            )
        return volume.float()

    def slice_scores(self, item: Mapping[str, Any], volume: torch.Tensor, name: str) -> torch.Tensor:
        """Class ``class_index`` scores (D,) of one case: from the output, or computed by the network."""
        if self.scores_key in item:
            scores = _case_scores(item[self.scores_key], self.class_index, name, self.scores_key)
            if scores.numel() != volume.shape[-1]:
                raise InputError(
                    f"case {name}: '{self.scores_key}' has {scores.numel()} slices, the volume {volume.shape[-1]}."
                )
            return scores
        device = model_device(self.network, volume.device)
        slices = volume.permute(3, 0, 1, 2)  # (D, C, H, W), the slices as CTMILNet's trunk sees them
        with evaluation_mode(self.network):
            scores = batched_forward(self.scorer, lambda chunk: slices[chunk].to(device), n=slices.shape[0],
                                     batch_size=self.batch_size)
        return scores[:, 0].float().cpu()

    def explain_case(
        self, item: Mapping[str, Any], name: str, provenance: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Explain the top slices of one case, write its PNGs and then its JSON, and return the JSON record.

        An earlier JSON of the case is removed first, so a run killed while rewriting the PNGs never leaves
        a JSON beside overlays it did not make.
        """
        check_case_name(name)
        volume = self._volume(item, name)
        provenance = self.provenance(item, name) if provenance is None else provenance
        self.json_path(name).unlink(missing_ok=True)
        for stale in self.json_path(name).parent.glob(f".{name}_*.tmp"):  # left by a job killed while writing
            stale.unlink(missing_ok=True)
        scores = self.slice_scores(item, volume, name)
        slices = top_scoring_slices(scores, self.top_k)
        folder = self.output_dir / name
        record: dict[str, Any] = {
            "case": name,
            "class_index": self.class_index,
            "num_slices": int(volume.shape[-1]),
            "top_slices": slices,
            "settings": {
                "n_segments": self.n_segments, "num_samples": self.num_samples, "baseline": self.baseline,
                "output": self.output, "seed": self.seed,
            },
            "methods": {method: [] for method in self.methods},
            "provenance": dict(provenance),
        }
        display_range = (float(volume.min()), float(volume.max()))
        with evaluation_mode(self.network):
            for rank, z in enumerate(slices):
                image = volume[..., z][None]  # (1, C, H, W), as CTMILNet feeds slice z to its trunk
                started = time.perf_counter()
                segments = self.segmenter(image)
                segmentation_time = time.perf_counter() - started
                for method, explainer in self.explainers.items():
                    started = time.perf_counter()
                    maps = explainer(image, 0, segments=segments)
                    runtime = time.perf_counter() - started
                    explanation = explainer.last_explanation
                    weights, areas, top = superpixel_summary(explanation, 0, self.num_top_superpixels)
                    png = self._save_overlay(image[0], maps[0, 0], explanation.segments[0], top, display_range,
                                             folder, f"{name}_{method}_slice{z}.png")
                    entry = {
                        "slice": z,
                        "rank": rank,
                        "slice_score": float(scores[z]),
                        "explained_score": float(explanation.model_outputs[0]),
                        "intercept": float(explanation.intercepts[0]),
                        "num_superpixels": len(weights),
                        "weights": weights,
                        "areas": areas,
                        "top_superpixels": top,
                        "runtime_s": runtime,
                        "segmentation_runtime_s": segmentation_time,
                        "overlay": png.name,
                    }
                    if explanation.fit_scores is not None:
                        entry["fit_score"] = float(explanation.fit_scores[0])
                    record["methods"][method].append(entry)
        save_json(record, folder, name, suffix="_superpixels")
        return record

    def _save_overlay(
        self,
        image: torch.Tensor,
        weight_map: torch.Tensor,
        segments: torch.Tensor,
        top: Sequence[Mapping[str, Any]],
        display_range: tuple[float, float],
        folder: Path,
        filename: str,
    ) -> Path:
        """Overlay (:func:`~medxai.explain.writers.render_overlay`) with the top superpixels outlined, as PNG."""
        gray = image.float().mean(dim=0).cpu().numpy()
        rgb = render_overlay(gray, weight_map.float().cpu().numpy(), cmap=self.cmap, alpha=self.alpha,
                             image_range=display_range)
        if top:
            labels = segments.cpu().numpy()
            rgb[find_boundaries(np.isin(labels, [t["label"] for t in top]), mode="inner")] = self.outline_color
        return save_png(rgb, folder / filename)


class FeatureEmbeddingHandler(_PerCaseHandler):
    """t-SNE (and/or PCA) of the per-slice trunk features of an evaluation, coloured by class and marked by
    centre (seed 003 Fig. 14).

    At ITERATION_COMPLETED every case contributes up to ``max_slices_per_case`` slices of its features
    ``output[features_key]`` (D, K) (``features`` of :class:`~medxai.networks.ct_mil.CTMILNet`, the globally
    pooled trunk features of each slice) with the case label and group. At EPOCH_COMPLETED (rank 0, after
    gathering all ranks) each method embeds all kept slices in 2D and writes ``<prefix>embedding_<method>.png``
    (colour: label, marker: group) and ``<prefix>embedding_<method>.csv`` (``case, slice, x, y, label,
    group``); the coordinates also stay in ``self.embeddings[method]``.

    Slices are chosen by ``slice_selection``:

    - ``"even"`` (default): evenly spaced over the volume, first and last included (:func:`even_slices`),
      so each case shows diseased and disease-free slices alike; seed 003 points out that disease-free slices
      of positive patients fall into the negative cluster;
    - ``"top"``: the slices with the highest score of ``class_index`` in ``output[scores_key]`` (D, C), the
      most suspicious ones, in ascending slice order.

    Labels are the case label in ``label_key`` (class index or one-hot, in the output or the batch);
    groups are the datalist field ``group_key`` (e.g. ``centre``, which MONAI keeps in
    ``engine.state.batch``); either is ``"unknown"`` when absent.

    Parameters
    ----------
    output_dir
        Folder of the PNG and CSV files.
    method
        ``"tsne"``, ``"pca"`` or a list of both.
    max_slices_per_case
        Slices kept per case (``None``: all).
    seed
        t-SNE random state (same seed and features give the same coordinates).
    perplexity
        t-SNE perplexity (reduced for few points, see :func:`medxai.explain.embedding.tsne_embedding`).
    class_names
        Legend names of the integer labels.
    prefix
        File-name prefix (letters, digits, ``.``, ``_``, ``-``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        features_key: str = "features",
        label_key: str = "label",
        group_key: str = "centre",
        method: str | Sequence[str] = "tsne",
        max_slices_per_case: int | None = 16,
        seed: int = 0,
        slice_selection: str = "even",
        scores_key: str = "slice_scores",
        class_index: int = 1,
        perplexity: float = 30.0,
        class_names: Sequence[str] | None = None,
        image_key: str = "image",
        pseudonymize: bool = False,
        prefix: str = "",
    ) -> None:
        methods = [method] if isinstance(method, str) else list(method)
        bad = [m for m in methods if m not in EMBEDDING_METHODS]
        if not methods or bad:
            raise InputError(f"method must be 'tsne', 'pca' or a list of them, got {method!r}.")
        if slice_selection not in SLICE_SELECTIONS:
            raise InputError(f"slice_selection must be one of {SLICE_SELECTIONS}, got {slice_selection!r}.")
        if max_slices_per_case is not None and int(max_slices_per_case) < 1:
            raise InputError(f"max_slices_per_case must be >= 1 or None, got {max_slices_per_case}.")
        if prefix:
            check_case_name(prefix)
        super().__init__(output_dir, f"{prefix}embedding", image_key)
        self.features_key, self.label_key, self.group_key = features_key, label_key, group_key
        self.methods = list(dict.fromkeys(methods))
        self.max_slices_per_case = None if max_slices_per_case is None else int(max_slices_per_case)
        self.seed = int(seed)
        self.slice_selection = slice_selection
        self.scores_key = scores_key
        self.class_index = int(class_index)
        self.perplexity = float(perplexity)
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.pseudonymize = pseudonymize
        self.prefix = prefix
        self.embeddings: dict[str, np.ndarray] = {}
        self.logger = logging.getLogger(__name__)

    def collect(self, engine: Engine) -> None:
        """Keep the selected slices' features of every case of the iteration (output and batch fields)."""
        for item, name in _cases(engine, self.image_key, self.pseudonymize):
            name = name or f"case-{len(self.records):05d}"
            record = self.measure(item, name)
            if record is not None:
                self.records.append(record)

    def _selected(self, item: Mapping[str, Any], num_slices: int, name: str) -> list[int]:
        if self.slice_selection == "even":
            return even_slices(num_slices, self.max_slices_per_case)
        if self.scores_key not in item:
            raise InputError(f"case {name}: slice_selection='top' needs '{self.scores_key}' in the output.")
        scores = _case_scores(item[self.scores_key], self.class_index, name, self.scores_key)
        if scores.numel() != num_slices:
            raise InputError(
                f"case {name}: '{self.scores_key}' has {scores.numel()} slices, the features {num_slices}."
            )
        return sorted(top_scoring_slices(scores, self.max_slices_per_case or num_slices))

    def measure(self, item: Mapping[str, Any], name: str) -> dict[str, Any]:
        """The kept slices of one case: ``{"case", "slices", "features" (m, K), "label", "group"}``."""
        if self.features_key not in item:
            raise InputError(
                f"case {name}: no key '{self.features_key}' in the output (use DetailsInferer and keep the "
                f"'features' detail); it has {sorted(map(str, item))}."
            )
        features = _tensor(item[self.features_key])
        if features.ndim != 2 or features.shape[0] < 1:
            raise InputError(f"case {name}: '{self.features_key}' must be (D, K), got shape {tuple(features.shape)}.")
        slices = self._selected(item, features.shape[0], name)
        label = item.get(self.label_key)
        group = item.get(self.group_key)
        if isinstance(group, torch.Tensor):
            group = group.flatten()[0].item() if group.numel() == 1 else None
        return {
            "case": name,
            "slices": slices,
            "features": features[slices].numpy().astype(np.float64),
            "label": None if label is None else _label_index(label, f"'{self.label_key}' of case {name}"),
            "group": "unknown" if group is None or str(group) == "" else str(group),
        }

    def _label_name(self, label: int | None) -> str:
        if label is None:
            return "unknown"
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def __call__(self, engine: Engine) -> None:
        """Embed all kept slices with each method and write the PNG and CSV files (rank 0)."""
        records = self.gathered()
        rows = [(r["case"], z, r["label"], r["group"]) for r in records for z in r["slices"]]
        if len(rows) < 4:
            self.logger.warning(
                "FeatureEmbeddingHandler: %d slice(s) collected, an embedding needs 4; nothing written.", len(rows)
            )
            return
        widths = {r["features"].shape[1] for r in records}
        if len(widths) != 1:
            raise InputError(f"cases have features of different widths {sorted(widths)}; one network must make them.")
        features = np.concatenate([r["features"] for r in records], axis=0)
        labels = [self._label_name(label) for _, _, label, _ in rows]
        groups = [group for _, _, _, group in rows]
        marked = groups if len(set(groups)) <= 10 else None
        if marked is None:
            self.logger.warning("FeatureEmbeddingHandler: %d groups are too many markers; plotting without them.",
                                len(set(groups)))
        for method in self.methods:
            kwargs = {"seed": self.seed, "perplexity": self.perplexity} if method == "tsne" else {}
            coords = embed(features, method, **kwargs)
            self.embeddings[method] = coords
            if idist.get_rank() != 0:
                continue
            stem = f"{self.prefix}embedding_{method}"
            title = f"{'t-SNE' if method == 'tsne' else 'PCA'} of slice features ({len(rows)} slices)"
            plot_embedding(coords, labels, self.output_dir / f"{stem}.png", groups=marked, title=title)
            with open(self.output_dir / f"{stem}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["case", "slice", "x", "y", "label", "group"])
                for (case, z, label, group), (x, y) in zip(rows, coords):
                    writer.writerow([case, z, f"{x:.6g}", f"{y:.6g}", "unknown" if label is None else label, group])
