"""Compare explainers on the evaluated cases: probability perturbation curves and AOPPC (seed 001 eq. 12,
Fig. 13) and, where lesion masks exist, whether the maps land on the lesions.

Seed 001 compares CXRNet's representation image with a saliency map and Grad-CAM by removing what each
map calls important (pixels at normalised value ``>= x`` set to 0, ``x = 1.0, 0.9, ..., 0.1``) from every
COVID-19 image and tracking the classifier's COVID-19 probability; the area over that curve (AOPPC) is
larger for the map whose top pixels matter more (0.903 vs Grad-CAM 0.868 vs saliency 0.629 there).
:class:`ExplanationComparisonHandler` does this for any set of explainers during a MONAI evaluator run
(the perturbation scoring itself is :func:`medxai.metrics.perturbation_curves.aoppc`), and adds the
pointing game (Zhang et al. 2018) and the energy share inside the lesion mask (Score-CAM, Wang et al.
2020) with the share a uniform map would get (the mask's share of the image) as chance level.

Each explained case is also written on its own (``<output_dir>/comparison_cases/<case>_comparison.json``,
atomically, with its provenance): a case that fails is recorded in the run's errors file and the job goes
on, and a resumed job reuses the cases an earlier run finished instead of recomputing them, with cohort
outputs equal to an uninterrupted run's.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medxai.data.fault_tolerant import BadCaseLog, atomic_write, case_source
from medxai.engines.explain_handlers import (
    CaseCounts,
    CaseProgress,
    _cases,
    _plain_json,
    _read_record,
    _tensor,
    evaluation_mode,
    network_digest,
    tensor_digest,
)
from medxai.engines.handlers import _label_index
from medxai.errors import InputError
from medxai.explain.writers import check_case_name, save_json, to_jsonable
from medxai.metrics.localization import energy_pointing_game, pointing_game
from medxai.metrics.perturbation_curves import PAPER_AOPPC_THRESHOLDS, aoppc

__all__ = ["ExplanationComparisonHandler", "bootstrap_mean_ci"]

#: Per-case values of one method, as in the CSV (NaN where undefined).
_CASE_FIELDS = ("aoppc", "pointing", "energy_in_lesion", "lesion_fraction")
CASES_FOLDER = "comparison_cases"


def _describe(explainer: Any) -> dict[str, Any]:
    """The type and the plain (str, number, bool, None, or lists of them) attributes of an explainer: what
    the stored provenance compares, e.g. Grad-CAM's layer name."""
    kind = type(explainer)
    described: dict[str, Any] = {"type": f"{kind.__module__}.{getattr(explainer, '__qualname__', kind.__qualname__)}"}
    plain = (str, int, float, bool, type(None))
    for key, value in sorted(getattr(explainer, "__dict__", {}).items()):
        if isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value)):
            described[key] = value
    return described


def _number(value: Any) -> float:
    """A stored number back as a float (``None``, JSON's stand-in for NaN, as NaN)."""
    return float("nan") if value is None else float(value)


def bootstrap_mean_ci(
    values: np.ndarray, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (NaN dropped); ``None`` for fewer than 2 values."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2 or n_bootstrap < 1:
        return None
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, finite.size, size=(n_bootstrap, finite.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))]


def _summary(values: list[float], n_bootstrap: int, seed: int) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "ci95": bootstrap_mean_ci(finite, n_bootstrap, seed=seed),
        "n": int(finite.size),
    }


class ExplanationComparisonHandler(CaseCounts):
    """Perturbation curves, AOPPC and lesion localisation of several explainers over an evaluation.

    At every iteration the cases whose true class is ``target_class`` (seed 001: all COVID-19 images) are
    explained for that class by every explainer on the network's input; at COMPLETED the handler writes
    into ``output_dir``:

    - ``explanation_comparison.json``: per method the AOPPC (mean over images, bootstrap 95 % interval,
      eq. 12), the mean probability perturbation curve (``x`` = 0, 0.1, ..., 1.0), and with ``lesion_key``
      the pointing-game hit rate, the energy share inside the lesion mask, the lesion's share of the
      image, or of the region with ``region_key`` (the energy share of a uniform map, and the pointing-game
      hit rate of a random pixel: chance;
      cases with an empty mask are left out of all three) and ``energy_lift``, the per-case difference of
      the two (paired, so its interval says whether the map beats chance); ``n_cases`` and the settings;
    - ``explanation_comparison.csv``: one row per case and method (case, method, aoppc, pointing, energy);
    - ``perturbation_curves.png``: the mean curves, as Fig. 13;
    - ``comparison_cases/<case>_comparison.json``: per explained case its target, per method the CSV values
      and the curve, and its provenance (the settings, the explainers' plain attributes, SHA-256 of the
      model's weights, of the case's image, masks and target, and of those of its batch), written
      atomically once the batch is done.

    A case that fails with a case error (a missing mask, an explainer's ``InputError``, ...; see
    :class:`~medxai.engines.explain_handlers.CaseProgress`) is logged and recorded in ``bad_case_log`` and
    left out; when a batch fails, its cases are explained one by one so only the failing ones are lost. With
    ``resume`` (default) the cases of a batch are read back instead of explained when every one of them is
    stored with the same provenance, which includes the inputs of the batch it was explained in (batched
    convolutions are not bit-identical across batch compositions); otherwise the whole batch is explained
    again. Read-back values enter the summaries exactly as computed ones (curves keep their dtype), so the
    files at COMPLETED are byte-identical to an uninterrupted run's. The log says how many cases were
    computed, reused and failed.

    Parameters
    ----------
    explainers
        ``{method name: explainer}``; each is called as ``explainer(x, target)`` on a batch (B, C, H, W) and
        returns maps (B, 1, H, W) (:class:`medxai.explain.base.Explainer`).
    output_dir
        Where the files go (rank 0 only writes; use it in single-process evaluation).
    target_class
        Class index or name (with ``class_names``) whose cases are explained; ``None``: every case, each for
        its true class.
    class_names
        Names of the classes, to resolve ``target_class`` and label the output.
    model
        The classifier whose probability is tracked; default the engine's network.
    image_key, label_key, lesion_key
        Keys of the network input (C, H, W), the true class and an optional lesion mask (1, H, W) on the same
        grid (any value > 0 is lesion).
    region_key
        Optional mask (1, H, W), e.g. the lung mask, outside which every map is set to 0 before scoring: the
        comparison then ranks only the pixels the network sees (a lung-segmented input is 0 elsewhere).
        ``None`` (default): the maps as the explainers return them, as in seed 001.
    thresholds
        The ``x`` of eq. 12 (default 0.1, ..., 1.0).
    baseline
        Value the removed pixels take (0 in the paper).
    max_cases
        Stop explaining after this many cases (``None``: all).
    n_bootstrap, seed
        Bootstrap resamples and seed of the intervals.
    resume
        Reuse the per-case results of an earlier run with the same provenance; ``False``: recompute all.
    bad_case_log
        A :class:`~medxai.data.fault_tolerant.BadCaseLog` shared with the run's data loaders, a path, or
        ``None`` (failures are only logged).
    skip_failed_cases
        ``False``: the first failing case stops the run.
    """

    def __init__(
        self,
        explainers: Mapping[str, Any],
        output_dir: str | Path,
        target_class: int | str | None = None,
        class_names: list[str] | None = None,
        model: torch.nn.Module | None = None,
        image_key: str = "image",
        label_key: str = "label",
        lesion_key: str | None = None,
        region_key: str | None = None,
        thresholds: list[float] | tuple[float, ...] = PAPER_AOPPC_THRESHOLDS,
        baseline: float = 0.0,
        max_cases: int | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
        resume: bool = True,
        bad_case_log: BadCaseLog | str | Path | None = None,
        skip_failed_cases: bool = True,
    ) -> None:
        if not explainers:
            raise InputError("ExplanationComparisonHandler needs at least one explainer.")
        self.explainers = dict(explainers)
        self.output_dir = Path(output_dir)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        if isinstance(target_class, str):
            if self.class_names is None or target_class not in self.class_names:
                raise InputError(f"target_class '{target_class}' is not one of class_names {self.class_names}.")
            target_class = self.class_names.index(target_class)
        self.target_class = target_class
        self.model = model
        self.image_key, self.label_key, self.lesion_key = image_key, label_key, lesion_key
        self.region_key = region_key
        self.thresholds = tuple(float(t) for t in thresholds)
        self.baseline = float(baseline)
        self.max_cases = max_cases
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)
        self.rows: list[dict[str, Any]] = []
        self.curves: dict[str, list[np.ndarray]] = {name: [] for name in self.explainers}
        self.abscissa: list[float] = []
        self.num_cases = 0
        if not isinstance(resume, bool):  # a command-line "false" would otherwise be truthy
            raise InputError(f"resume must be true or false, got {resume!r}.")
        self.resume = resume
        self.progress = CaseProgress(type(self).__name__, bad_case_log, skip_failed_cases)
        self._settings = _plain_json({
            "explainers": {name: _describe(e) for name, e in self.explainers.items()},
            "target_class": self.target_class, "image_key": image_key, "label_key": label_key,
            "lesion_key": lesion_key, "region_key": region_key, "thresholds": list(self.thresholds),
            "baseline": self.baseline,
        })  # fmt: skip
        self._model_digest: str | None = None

    def attach(self, engine: Engine) -> None:
        """Explain at every ITERATION_COMPLETED, write the files at COMPLETED."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.num_cases = [], 0
        self.curves = {name: [] for name in self.explainers}
        self.progress.reset()
        self._model_digest = None  # CheckpointLoader may have loaded new weights

    def case_path(self, case: str) -> Path:
        """``<output_dir>/comparison_cases/<case>_comparison.json``."""
        return self.output_dir / CASES_FOLDER / f"{check_case_name(case)}_comparison.json"

    def _stored(self, case: str, provenance: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored result of ``case`` when complete and made with ``provenance``, else ``None``."""
        record = _read_record(self.case_path(case))
        if record is None or record.get("provenance") != _plain_json(provenance):
            return None
        methods = record.get("methods")
        if not isinstance(methods, dict) or sorted(methods) != sorted(self.explainers):
            return None
        if not all(isinstance(m, dict) and isinstance(m.get("curve"), list) for m in methods.values()):
            return None
        return record

    def _explain(
        self,
        model: torch.nn.Module,
        device: torch.device,
        cases: list[str],
        images: list[torch.Tensor],
        targets: list[int],
        lesions: list[torch.Tensor],
        regions: list[torch.Tensor],
    ) -> list[dict[str, Any]]:
        """Explain a batch of cases with every method: one result per case (target, per method the CSV values
        and the curve (T,) in its dtype)."""
        x = torch.stack(images).to(device)
        target = torch.as_tensor(targets)
        results: list[dict[str, Any]] = [
            {"case": case, "target": int(targets[i]), "x": [], "methods": {}} for i, case in enumerate(cases)
        ]
        with evaluation_mode(model):
            for name, explainer in self.explainers.items():
                maps = explainer(x, target).detach()
                if maps.shape[0] != x.shape[0] or maps.shape[2:] != x.shape[2:]:
                    raise InputError(
                        f"explainer '{name}' returned maps of shape {tuple(maps.shape)} for inputs {tuple(x.shape)}."
                    )
                if regions:
                    maps = maps * torch.stack(regions).to(maps.device)
                curve = aoppc(model, x, maps, target.to(device), self.thresholds, self.baseline)
                abscissa = [round(float(v), 6) for v in curve.x]
                probabilities = curve.probabilities.detach().cpu().numpy()
                points = energy = coverage = [float("nan")] * len(cases)
                if lesions:
                    masks = torch.stack(lesions)
                    cpu_maps = maps.float().cpu()
                    points = pointing_game(cpu_maps, masks).tolist()
                    energy = energy_pointing_game(cpu_maps, masks).tolist()
                    # chance: a uniform map (over the region, when maps are restricted to it) puts this share
                    # of its energy in the lesion; no lesion: undefined, as the pointing game and energy are
                    area = torch.stack(regions).flatten(1) if regions else torch.ones_like(masks.flatten(1))
                    share = (masks.flatten(1) * area).sum(1) / area.sum(1).clamp(min=1)
                    coverage = torch.where(share > 0, share, torch.nan).tolist()
                for i, result in enumerate(results):
                    result["x"] = abscissa
                    result["methods"][name] = {
                        "aoppc": float(curve.score[i]),
                        "pointing": points[i],
                        "energy_in_lesion": energy[i],
                        "lesion_fraction": coverage[i],
                        "curve": probabilities[i],
                    }
        return results

    def _save_case(self, result: dict[str, Any], provenance: Mapping[str, Any]) -> None:
        """Write one case's result last and atomically: its presence marks the case as done."""
        curves = {name: entry["curve"] for name, entry in result["methods"].items()}
        record = {
            **{k: v for k, v in result.items() if k != "methods"},
            "methods": {name: {k: v for k, v in entry.items() if k != "curve"} | {"curve": curves[name].tolist()}
                        for name, entry in result["methods"].items()},
            "curve_dtype": {name: str(curve.dtype) for name, curve in curves.items()},
            "provenance": provenance,
        }  # fmt: skip
        save_json(record, self.output_dir / CASES_FOLDER, result["case"], suffix="_comparison")

    @staticmethod
    def _from_record(record: Mapping[str, Any]) -> dict[str, Any]:
        """A stored case back as :meth:`_explain` returns it (NaN restored, curves in their stored dtype)."""
        dtypes = record.get("curve_dtype", {})
        return {
            "case": record["case"],
            "target": int(record["target"]),
            "x": list(record["x"]),
            "methods": {
                name: {**{f: _number(entry.get(f)) for f in _CASE_FIELDS},
                       "curve": np.asarray([_number(v) for v in entry["curve"]], dtype=dtypes.get(name, "float64"))}
                for name, entry in record["methods"].items()
            },
        }  # fmt: skip

    def _collect(self, engine: Engine) -> None:
        model = self.model if self.model is not None else engine.network
        device = next(model.parameters()).device
        chosen, sources, images, targets, lesions, regions = [], [], [], [], [], []
        for item, case in _cases(engine, self.image_key, pseudonymize=False):
            if self.max_cases is not None and self.num_cases + len(chosen) >= self.max_cases:
                break
            name = case or f"case-{self.num_cases + len(chosen)}"
            try:
                label = _label_index(item.get(self.label_key), f"case {name}: '{self.label_key}'")
                if self.target_class is not None and label != self.target_class:
                    continue
                if self.image_key not in item:
                    raise InputError(f"case {name}: the input '{self.image_key}' is missing from the evaluator's data.")
                image = _tensor(item[self.image_key])
                lesion = region = None
                if self.lesion_key is not None:
                    if item.get(self.lesion_key) is None:
                        raise InputError(f"case {name}: lesion mask '{self.lesion_key}' is missing.")
                    lesion = (_tensor(item[self.lesion_key]) > 0).float()
                if self.region_key is not None:
                    if item.get(self.region_key) is None:
                        raise InputError(f"case {name}: region mask '{self.region_key}' is missing.")
                    region = (_tensor(item[self.region_key]) > 0).float()
            except Exception as exc:  # an unnamed case is numbered among the failed ones: never reused
                failed_name = case or f"unnamed-{len(self.progress.failed)}"
                self.progress.failure(exc, failed_name, case_source(item, self.image_key))
                continue
            chosen.append(name)
            sources.append(case_source(item, self.image_key))
            images.append(image)
            targets.append(label if self.target_class is None else self.target_class)
            if lesion is not None:
                lesions.append(lesion)
            if region is not None:
                regions.append(region)
        if not chosen:
            return
        if self._model_digest is None:
            self._model_digest = network_digest(model)
        inputs = [
            tensor_digest(images[i], lesions[i] if lesions else None, regions[i] if regions else None,
                          torch.tensor(targets[i]))
            for i in range(len(chosen))
        ]  # fmt: skip

        def provenance(i: int, batch: list[int]) -> dict[str, Any]:
            # the batch the case was explained in is part of it: batched convolutions are not bit-identical
            # across batch compositions, and a reused value must equal what this run would compute
            return {
                "settings": self._settings,
                "network_sha256": self._model_digest,
                "input_sha256": inputs[i],
                "batch_input_sha256": [inputs[j] for j in batch],
            }

        everyone = list(range(len(chosen)))
        results: dict[int, dict[str, Any]] = {}
        if self.resume:  # the batch as a unit: all its cases stored from this very batch, or recompute it
            stored = [self._stored(case, provenance(i, everyone)) for i, case in enumerate(chosen)]
            if all(record is not None for record in stored):
                results = {i: self._from_record(record) for i, record in enumerate(stored)}
                self.progress.reused += len(stored)

        def explain(indices: list[int]) -> None:
            computed = self._explain(
                model, device, [chosen[i] for i in indices], [images[i] for i in indices],
                [targets[i] for i in indices], [lesions[i] for i in indices] if lesions else [],
                [regions[i] for i in indices] if regions else [],
            )  # fmt: skip
            for i, result in zip(indices, computed):
                self._save_case(result, provenance(i, indices))
                results[i] = result
                self.progress.computed += 1

        if not results:
            try:
                explain(everyone)
            except Exception as exc:
                if len(everyone) == 1:
                    self.progress.failure(exc, chosen[0], sources[0])
                else:
                    self.progress.check(exc)  # a programming error propagates here
                    for i in everyone:  # find the failing case(s): one by one
                        try:
                            explain([i])
                        except Exception as single:
                            self.progress.failure(single, chosen[i], sources[i])
        kept = [i for i in range(len(chosen)) if i in results]
        for name in self.explainers:  # rows method by method, as for a batch explained in one go
            for i in kept:
                entry = results[i]["methods"][name]
                self.abscissa = list(results[i]["x"])
                self.curves[name].append(np.asarray(entry["curve"])[None])
                self.rows.append({"case": chosen[i], "method": name, "target": int(targets[i]),
                                  **{f: entry[f] for f in _CASE_FIELDS}})  # fmt: skip
        self.num_cases += len(kept)

    def results(self) -> dict[str, Any]:
        """The JSON content: per-method summaries (see the class docstring)."""
        methods: dict[str, Any] = {}
        for name in self.explainers:
            rows = [r for r in self.rows if r["method"] == name]
            curves = np.concatenate(self.curves[name]) if self.curves[name] else np.zeros((0, len(self.abscissa)))
            entry: dict[str, Any] = {
                "aoppc": _summary([r["aoppc"] for r in rows], self.n_bootstrap, self.seed),
                "mean_curve": curves.mean(0).tolist() if len(curves) else None,
            }
            if self.lesion_key is not None:
                entry["pointing_game"] = _summary([r["pointing"] for r in rows], self.n_bootstrap, self.seed)
                entry["energy_in_lesion"] = _summary([r["energy_in_lesion"] for r in rows], self.n_bootstrap, self.seed)
                entry["uniform_map_energy_in_lesion"] = _summary(
                    [r["lesion_fraction"] for r in rows], self.n_bootstrap, self.seed
                )
                entry["energy_lift"] = _summary(
                    [r["energy_in_lesion"] - r["lesion_fraction"] for r in rows], self.n_bootstrap, self.seed
                )
            methods[name] = entry
        target = self.target_class
        return {
            "n_cases": self.num_cases,
            "target_class": None if target is None else (self.class_names[target] if self.class_names else target),
            "thresholds": list(self.thresholds),
            "x": self.abscissa,
            "baseline": self.baseline,
            "region": self.region_key,
            "methods": methods,
        }

    def _write(self, engine: Engine) -> None:
        self.progress.summarize()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.output_dir.mkdir(parents=True, exist_ok=True)
        results = self.results()
        content = json.dumps(to_jsonable(results), indent=2, allow_nan=False)
        atomic_write(self.output_dir / "explanation_comparison.json", content + "\n")
        fields = ["case", "method", "target", "aoppc", "pointing", "energy_in_lesion", "lesion_fraction"]
        lines = [",".join(fields)] + [",".join(f"{row[f]}" for f in fields) for row in self.rows]
        atomic_write(self.output_dir / "explanation_comparison.csv", "\n".join(lines) + "\n")
        figure, axis = plt.subplots(figsize=(5, 4))
        for name, entry in results["methods"].items():
            if entry["mean_curve"] is not None:
                score = entry["aoppc"]["mean"]
                axis.plot(results["x"], entry["mean_curve"], marker="o", label=f"{name} (AOPPC {score:.3f})")
        axis.set_xlabel("perturbation index x (pixels with normalised value >= x removed)")
        axis.set_ylabel(f"probability of {results['target_class'] or 'the true class'}")
        axis.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        atomic_write(self.output_dir / "perturbation_curves.png", buffer.getvalue())
