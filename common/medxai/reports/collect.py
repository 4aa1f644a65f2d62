"""Read what a bundle's ``explain.json`` and ``evaluate.json`` wrote back from disk, for the HTML report.

Only the output files are read (never in-memory objects, never image headers), so a report can be built
after the run, on another machine, or from the outputs of several ranks. Two layouts of ``output_dir`` are
recognised, as the bundles write them:

- one folder per case: ``<output_dir>/<case>/<case>_summary.json`` beside the case's PNG overlays,
  ``<case>_boxes.json`` and NIfTI maps (CT MIL, CT transfer, CXRNet, lung and ventricle segmentation);
- one folder per explainer, then per case: ``<output_dir>/<method>/<case>/<case>_summary.json``
  (the CXR ensemble writes Grad-CAM, Grad-CAM++ and LRP side by side), with ``<method>/predictions.csv``.

The evaluation folder (``evaluate.json``'s ``output_dir``) gives ``metrics.json`` (and other JSON tables),
the PNG curves (ROC, PR, confusion, Dice) and ``predictions.csv`` with the reference labels.
"""

from __future__ import annotations

import csv
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medxai.errors import InputError

__all__ = ["CaseView", "CaseOutputs", "Figure", "CohortOutputs", "png_size", "read_figure", "collect_outputs"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: the case names :func:`medxai.explain.writers.check_case_name` lets the writers use (checked again here
#: without importing the explainers, so that ``medxai report`` starts fast)
_CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SUMMARY_SUFFIX = "_summary.json"


@dataclass(frozen=True)
class Figure:
    """One PNG file: its path relative to the folder it was found in, a caption and its bytes."""

    name: str
    caption: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class CaseView:
    """What one explainer (or the bundle's own explanation) wrote for one case.

    ``method`` is the explainer folder in the per-explainer layout, else ``None``; ``summary`` is
    ``<case>_summary.json``; ``boxes`` the boxes of ``<case>_boxes.json`` (or of the summary);
    ``figures`` every PNG of the case folder; ``files`` the other files there (NIfTI maps, JSON), by name.
    """

    method: str | None
    summary: dict[str, Any]
    boxes: list[dict[str, Any]] | None
    figures: list[Figure]
    files: list[str]


@dataclass(frozen=True)
class CaseOutputs:
    """All views of one case, in method order, and its reference label from the evaluation, if any."""

    case: str
    views: list[CaseView]
    label: str | None = None


@dataclass(frozen=True)
class CohortOutputs:
    """The whole run: cases, the predictions tables, JSON tables, figures and the cases that failed."""

    output_dir: Path
    eval_dir: Path | None
    cases: list[CaseOutputs]
    predictions: dict[str | None, list[dict[str, str]]] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    bad_cases: list[dict[str, str]] = field(default_factory=list)


def png_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """Width and height of a PNG from its ``IHDR`` chunk.

    Raises
    ------
    InputError
        When ``data`` is not a PNG (naming ``name``).
    """
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise InputError(f"{name} is not a PNG file (no PNG signature and IHDR header).")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def read_figure(path: Path, root: Path, caption: str) -> Figure:
    """A :class:`Figure` for the PNG at ``path``, named relative to ``root``."""
    data = path.read_bytes()
    name = path.relative_to(root).as_posix()
    width, height = png_size(data, name)
    return Figure(name=name, caption=caption, data=data, width=width, height=height)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{what} ({path.name}) is not valid JSON: {err}.") from err


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "case" not in rows[0]:
        raise InputError(f"{path.name} in {path.parent} has no 'case' column (columns: {list(rows[0])}).")
    return rows


def _caption(case: str, stem: str, method: str | None) -> str:
    tag = stem[len(case) + 1 :] if stem.startswith(f"{case}_") else stem
    tag = tag.replace("_", " ")
    return f"{method}: {tag}" if method else tag


def _read_view(folder: Path, case: str, method: str | None) -> CaseView:
    summary = _read_json(folder / f"{case}{SUMMARY_SUFFIX}", f"summary of case '{case}'")
    if not isinstance(summary, dict):
        raise InputError(f"summary of case '{case}' must be a JSON object, got {type(summary).__name__}.")
    boxes_path = folder / f"{case}_boxes.json"
    boxes = summary.get("boxes")
    if boxes_path.is_file():
        boxes = _read_json(boxes_path, f"boxes of case '{case}'").get("boxes")
    label = method or (summary.get("method") if isinstance(summary.get("method"), str) else None)
    figures, files = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix.lower() == ".png":
            figures.append(read_figure(path, folder, _caption(case, path.stem, label)))
        else:
            files.append(path.name)
    return CaseView(method=method, summary=summary, boxes=boxes, figures=figures, files=files)


def _find_case_folders(output_dir: Path) -> dict[str, list[tuple[str | None, Path]]]:
    """``{case: [(method or None, folder), ...]}`` for both layouts, sorted by case then method."""
    found: dict[str, list[tuple[str | None, Path]]] = {}
    for depth in (1, 2):  # <case>/ or <method>/<case>/
        for path in sorted(output_dir.glob("*/" * depth + f"*{SUMMARY_SUFFIX}")):
            folder = path.parent
            if path.name != f"{folder.name}{SUMMARY_SUFFIX}":
                continue
            case = folder.name
            if not _CASE_NAME.fullmatch(case) or ".." in case:
                raise InputError(f"case folder {folder.relative_to(output_dir)} is not a case name the writers make.")
            found.setdefault(case, []).append((folder.parent.name if depth == 2 else None, folder))
    return {case: found[case] for case in sorted(found)}


def _eval_labels(rows: list[dict[str, str]]) -> dict[str, str]:
    column = "label_name" if rows and "label_name" in rows[0] else ("label" if rows and "label" in rows[0] else None)
    return {} if column is None else {row["case"]: row[column] for row in rows}


def collect_outputs(output_dir: str | Path, eval_dir: str | Path | None = None) -> CohortOutputs:
    """Read the explain outputs under ``output_dir`` and, when given, the evaluation under ``eval_dir``.

    Parameters
    ----------
    output_dir
        ``explain.json``'s (or ``inference.json``'s) ``output_dir``.
    eval_dir
        ``evaluate.json``'s ``output_dir`` (``metrics.json``, curves, ``predictions.csv``), or ``None``.

    Returns
    -------
    CohortOutputs
        Cases sorted by name; ``predictions`` maps ``None`` (the top-level ``predictions.csv``) or the
        explainer name to its rows; ``tables`` maps ``"<folder>/<file>.json"`` to the parsed JSON of the
        evaluation's and the output folder's top-level JSON files (``bad_cases.json`` aside).

    Raises
    ------
    InputError
        When ``output_dir`` does not exist or holds no case summaries, or ``eval_dir`` does not exist.
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise InputError(f"output folder {root} does not exist; run the bundle's explain.json first.")
    folders = _find_case_folders(root)
    if not folders:
        raise InputError(f"no '<case>/<case>{SUMMARY_SUFFIX}' under {root}; is it an explain output folder?")
    evaluation = None if eval_dir is None else Path(eval_dir)
    if evaluation is not None and not evaluation.is_dir():
        raise InputError(f"evaluation folder {evaluation} does not exist; run the bundle's evaluate.json first.")

    predictions: dict[str | None, list[dict[str, str]]] = {}
    if (root / "predictions.csv").is_file():
        predictions[None] = _read_csv(root / "predictions.csv")
    for path in sorted(root.glob("*/predictions.csv")):
        predictions[path.parent.name] = _read_csv(path)
    eval_csv = None if evaluation is None else evaluation / "predictions.csv"
    labels = _eval_labels(_read_csv(eval_csv)) if eval_csv is not None and eval_csv.is_file() else {}

    cases = [
        CaseOutputs(case, [_read_view(folder, case, method) for method, folder in views], labels.get(case))
        for case, views in folders.items()
    ]
    tables: dict[str, Any] = {}
    figures: list[Figure] = []
    for folder, title in ((evaluation, "evaluation"), (root, "explanation")):
        if folder is None:
            continue
        for path in sorted(folder.glob("*.json"), key=lambda p: (p.name != "metrics.json", p.name)):
            if path.name != "bad_cases.json":
                tables[f"{title}/{path.name}"] = _read_json(path, f"{title} table")
        pngs = sorted(folder.glob("*.png"))
        if folder == root:  # figures one folder down, e.g. embedding/, but not the case folders
            pngs += sorted(p for p in folder.glob("*/*.png") if p.parent.name not in folders)
        figures += [read_figure(p, folder, f"{title}: {p.relative_to(folder).as_posix()}") for p in pngs]
    bad_path = root / "bad_cases.json"
    bad_cases = _read_json(bad_path, "bad cases list") if bad_path.is_file() else []
    if not isinstance(bad_cases, list):
        raise InputError(f"{bad_path.name} must hold a JSON list, got {type(bad_cases).__name__}.")
    return CohortOutputs(
        output_dir=root, eval_dir=evaluation, cases=cases, predictions=predictions, tables=tables, figures=figures,
        bad_cases=[{k: str(v) for k, v in entry.items()} for entry in bad_cases if isinstance(entry, Mapping)],
    )  # fmt: skip
