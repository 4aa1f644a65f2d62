"""Self-contained HTML pages from a bundle's explain and evaluation outputs (issue 9).

:func:`write_report` reads the files with :func:`medxai.reports.collect.collect_outputs` and writes
``<report_dir>/index.html`` (the cohort: metrics, curves, the table of cases linking to their pages, the
cases that failed) and ``<report_dir>/<case>.html`` per case (every explainer's PNG overlays, the
probabilities, the boxes, the sentence and the other summary values). Pages are plain HTML with an inline
style sheet: images are embedded as ``data:image/png;base64`` URIs, nothing is fetched from elsewhere, no
script runs, every text from the files goes through :func:`html.escape`, and the same files give the same
bytes (no dates, sorted order). Each number shown rounded keeps its exact value in a ``data-value``
attribute, so that tests and scripts can read the page back.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medxai.reports.collect import CaseOutputs, CaseView, CohortOutputs, Figure, collect_outputs

__all__ = ["format_value", "flatten", "render_case_page", "render_index_page", "write_report"]

#: significant digits of the numbers shown (the exact value stays in ``data-value``)
DIGITS = 4
#: summary keys shown in their own sections, or too long for the "details" table
_SUMMARY_SECTIONS = {"case", "probabilities", "sentence", "boxes", "explanation", "files", "class_names"}
#: lists of at most this many scalars are shown joined, longer ones left out of the tables
_MAX_LIST = 16
#: metric keys left out of the metric tables: the curves' points (the figures show them)
_SKIPPED_METRICS = {"curves"}
#: box columns, in order, when a box has them
_BOX_COLUMNS = ("min", "max", "num_voxels", "score_max", "score_mean", "slice_range", "volume_mm3", "area_mm2")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:80em}
table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.4em;vertical-align:top}
figure img{height:18em;width:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:.9em;color:#555}
.sentence{font-size:1.15em;background:#f6f8fa;border-left:4px solid #4a7;padding:.5em 1em}
.predicted{font-weight:bold}
nav a{margin-right:1em}
.scroll{overflow-x:auto}
td.long{min-width:22em}
"""


def format_value(value: Any) -> str:
    """The text shown for a value: numbers to :data:`DIGITS` significant digits (from 1000 on, one decimal and
    thousands separators), lists joined by spaces, ``None`` as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a" if math.isnan(value) else str(value)
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.{DIGITS}g}"
    if isinstance(value, (list, tuple)):
        return " ".join(format_value(v) for v in value)
    return str(value)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _cell(value: Any, tag: str = "td", cls: str = "") -> str:
    """One table cell; a number (or numeric CSV text) keeps its exact text in ``data-value``."""
    classes = [cls] if cls else []
    attributes = ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        attributes = f' data-value="{html.escape(repr(value))}"'
        classes.append("num")
    elif isinstance(value, str) and value and _number(value) is not None:
        attributes = f' data-value="{html.escape(value)}"'
        classes.append("num")
        value = float(value) if not value.lstrip("-").isdigit() else int(value)
    elif isinstance(value, str) and len(value) > 40:
        classes.append("long")
    class_attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<{tag}{class_attr}{attributes}>{html.escape(format_value(value))}</{tag}>"


def _scalar_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= _MAX_LIST and all(
        v is None or isinstance(v, (int, float, str, bool)) for v in value
    )


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted.key, value)`` for each scalar leaf of nested dicts, and for short lists of scalars.

    Longer lists (curves, per-slice scores) and lists of objects are left out: they belong in figures.
    """
    if isinstance(value, Mapping):
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, (list, tuple)):
        return [(prefix, list(value))] if _scalar_list(value) else []
    return [(prefix, value)]


def _key_value_table(rows: Iterable[tuple[str, Any]], table_class: str, source: str | None = None) -> str:
    body = "".join(
        f'<tr data-key="{html.escape(key)}"><th>{html.escape(key)}</th>{_cell(value)}</tr>' for key, value in rows
    )
    attribute = "" if source is None else f' data-source="{html.escape(source)}"'
    return f'<table class="{table_class}"{attribute}>{body}</table>' if body else ""


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.data).decode("ascii")
    return (
        f'<figure data-file="{html.escape(figure.name)}"><img src="data:image/png;base64,{data}" '
        f'width="{figure.width}" height="{figure.height}" alt="{html.escape(figure.caption)}">'
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
    )


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------------------ a case


def _probabilities(summary: Mapping[str, Any]) -> str:
    probabilities = summary.get("probabilities")
    if not isinstance(probabilities, Mapping) or not probabilities:
        return ""
    predicted = summary.get("predicted_class")
    marked = ' class="predicted"'
    rows = "".join(
        f"<tr{marked if name == predicted else ''}><th>{html.escape(str(name))}</th>{_cell(p)}</tr>"
        for name, p in probabilities.items()
    )
    caption = f"predicted: {html.escape(str(predicted))}" if predicted is not None else ""
    head = f"<caption>{caption}</caption><tr><th>class</th><th>probability</th></tr>"
    return f'<table class="probabilities">{head}{rows}</table>'


def _boxes(boxes: Sequence[Mapping[str, Any]] | None) -> str:
    if boxes is None:
        return ""
    if not boxes:
        return '<p class="no-boxes">No boxes: no region of the map is above the box threshold.</p>'
    columns = [c for c in _BOX_COLUMNS if any(c in box for box in boxes)]
    head = "<tr><th>box</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    rows = "".join(
        f"<tr><th>{i + 1}</th>" + "".join(_cell(box.get(c)) for c in columns) + "</tr>" for i, box in enumerate(boxes)
    )
    return f'<table class="boxes">{head}{rows}</table>'


def _view(view: CaseView) -> str:
    summary = view.summary
    parts = [f"<h2>{html.escape(view.method)}</h2>"] if view.method else []
    sentence = summary.get("sentence")
    if isinstance(sentence, str) and sentence:
        parts.append(f'<p class="sentence">{html.escape(sentence)}</p>')
    parts.append(_probabilities(summary))
    if view.figures:
        parts.append('<div class="figures">' + "".join(_figure(f) for f in view.figures) + "</div>")
    if view.boxes is not None:
        parts.append("<h3>Boxes</h3>" + _boxes(view.boxes))
    details = flatten({k: v for k, v in summary.items() if k not in _SUMMARY_SECTIONS})
    if details:
        parts.append("<h3>Details</h3>" + _key_value_table(details, "details"))
    if view.files:
        names = "".join(f"<li>{html.escape(name)}</li>" for name in view.files)
        parts.append(f'<h3>Other files</h3><ul class="files">{names}</ul>')
    method = html.escape(view.method or "")
    return f'<section class="view" data-method="{method}">' + "".join(p for p in parts if p) + "</section>"


def render_case_page(case: CaseOutputs, title: str, previous: str | None = None, following: str | None = None) -> str:
    """The HTML page of one case: a section per view (explainer) with its figures, probabilities and boxes."""
    links = ['<a href="index.html">all cases</a>']
    if previous is not None:
        links.append(f'<a rel="prev" href="{html.escape(previous)}.html">previous</a>')
    if following is not None:
        links.append(f'<a rel="next" href="{html.escape(following)}.html">next</a>')
    heading = f'<h1>{html.escape(title)}: case <span class="case">{html.escape(case.case)}</span></h1>'
    label = f'<p>Reference label: <span class="label">{html.escape(case.label)}</span></p>' if case.label else ""
    body = "<nav>" + "".join(links) + "</nav>" + heading + label + "".join(_view(v) for v in case.views)
    return _page(f"{title}: {case.case}", body)


# ------------------------------------------------------------------------------------------------ the cohort


def _case_columns(cohort: CohortOutputs) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns and ``{case: {column: text}}`` merged from the predictions tables.

    A column that is the same in every explainer's table is shown once; one that differs (sentence, number
    of boxes) once per explainer, as ``"<method>: <column>"``. Columns empty for every case are left out.
    """
    merged: dict[str, dict[str, str]] = {c.case: {} for c in cohort.cases}
    columns: list[str] = []
    tables = {m: {row["case"]: row for row in rows} for m, rows in cohort.predictions.items()}
    if not tables:  # no predictions.csv: what every summary has
        for case in cohort.cases:
            summary = case.views[0].summary
            for key in ("predicted_class", "sentence"):
                if isinstance(summary.get(key), str):
                    merged[case.case][key] = summary[key]
                    columns += [key] if key not in columns else []
        return columns, merged
    names = list(dict.fromkeys(c for rows in tables.values() for row in rows.values() for c in row if c != "case"))
    for name in names:
        values = {m: {case: row.get(name, "") for case, row in rows.items()} for m, rows in tables.items()}
        distinct = list({json.dumps(v, sort_keys=True) for v in values.values()})
        per_method = [(None, next(iter(values.values())))] if len(distinct) == 1 else list(values.items())
        for method, by_case in per_method:
            if not any(by_case.values()):
                continue
            column = f"{method}: {name}" if method else name
            columns.append(column)
            for case, text in by_case.items():
                merged.setdefault(case, {})[column] = text
    return columns, merged


def _cases_table(cohort: CohortOutputs) -> str:
    columns, merged = _case_columns(cohort)
    with_label = any(c.label is not None for c in cohort.cases)
    head = "<tr><th>case</th>" + ("<th>reference label</th>" if with_label else "")
    head += "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    rows = []
    for case in cohort.cases:
        name = html.escape(case.case)
        cells = f'<td><a href="{name}.html">{name}</a></td>'
        cells += f"<td>{html.escape(case.label or '')}</td>" if with_label else ""
        cells += "".join(_cell(merged.get(case.case, {}).get(c, "")) for c in columns)
        rows.append(f'<tr data-case="{name}">{cells}</tr>')
    return f'<div class="scroll"><table class="cases">{head}{"".join(rows)}</table></div>'


def _confusion(table: Mapping[str, Any]) -> str:
    matrix, names = table.get("confusion_matrix"), table.get("class_names")
    if not isinstance(matrix, list) or not isinstance(names, list) or len(matrix) != len(names):
        return ""
    head = "<tr><th>reference \\ predicted</th>" + "".join(f"<th>{html.escape(str(n))}</th>" for n in names) + "</tr>"
    rows = "".join(
        f"<tr><th>{html.escape(str(n))}</th>" + "".join(_cell(v) for v in row) + "</tr>"
        for n, row in zip(names, matrix)
    )
    return f'<table class="confusion">{head}{rows}</table>'


def render_index_page(cohort: CohortOutputs, title: str) -> str:
    """The cohort page: metric tables, figures, the table of cases (linking to their pages), failed cases."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{len(cohort.cases)} cases explained.</p>"]
    if cohort.tables:
        parts.append("<h2>Metrics</h2>")
        for name, table in cohort.tables.items():
            if isinstance(table, Mapping):
                table = {k: v for k, v in table.items() if k not in _SKIPPED_METRICS}
            rows = flatten(table)
            if not rows:
                continue
            confusion = _confusion(table) if isinstance(table, Mapping) else ""
            opened = " open" if name.endswith("/metrics.json") else ""
            parts.append(
                f"<details{opened}><summary>{html.escape(name)}</summary>{confusion}"
                + _key_value_table(rows, "metrics", source=name) + "</details>"
            )
    elif cohort.eval_dir is None:
        parts.append("<p>No evaluation folder was given.</p>")
    if cohort.figures:
        parts.append("<h2>Figures</h2><div class=\"figures\">" + "".join(_figure(f) for f in cohort.figures) + "</div>")
    parts.append("<h2>Cases</h2>" + _cases_table(cohort))
    if cohort.bad_cases:
        rows = "".join(
            f"<tr><td>{html.escape(b.get('case', ''))}</td><td>{html.escape(b.get('error', ''))}</td></tr>"
            for b in cohort.bad_cases
        )
        head = "<tr><th>case</th><th>error</th></tr>"
        parts.append(f'<h2>Cases that failed</h2><table class="bad-cases">{head}{rows}</table>')
    return _page(title, "\n".join(p for p in parts if p))


def write_report(
    output_dir: str | Path,
    eval_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    title: str = "Explanation report",
    eval_optional: bool = False,
) -> Path:
    """Write ``index.html`` and one ``<case>.html`` per case from a run's output files.

    Parameters
    ----------
    output_dir
        The explain (or inference) output folder.
    eval_dir
        The evaluation output folder (``metrics.json``, curves, ``predictions.csv`` with labels), or ``None``.
    report_dir
        Where the pages go (default ``<output_dir>/report``); created if needed.
    title
        Page title (e.g. the bundle name).
    eval_optional
        Build the report without the evaluation when ``eval_dir`` does not exist (the bundle's explain step
        runs whether or not ``evaluate.json`` was run); otherwise a missing ``eval_dir`` is an error.

    Returns
    -------
    Path
        The path of ``index.html``.
    """
    if eval_dir is not None and eval_optional and not Path(eval_dir).is_dir():
        eval_dir = None
    cohort = collect_outputs(output_dir, eval_dir)
    folder = Path(report_dir) if report_dir is not None else Path(output_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    names = [c.case for c in cohort.cases]
    for i, case in enumerate(cohort.cases):
        page = render_case_page(case, title, names[i - 1] if i else None, names[i + 1] if i + 1 < len(names) else None)
        (folder / f"{case.case}.html").write_text(page, encoding="utf-8")
    index = folder / "index.html"
    index.write_text(render_index_page(cohort, title), encoding="utf-8")
    return index
