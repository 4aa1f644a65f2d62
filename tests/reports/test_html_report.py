"""The HTML report: pages read back with :mod:`html.parser` show exactly what the output files hold.

The outputs are written by the bundles' writers and the bundles' own ``finalize`` steps (``conftest.py``), so
these tests also check that ``explain.json`` of the CXR ensemble and of the lung segmentation end with the
report step.
"""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_outputs import CASES, METHODS, ODD_SENTENCE

from medxai.cli import report as report_command
from medxai.errors import InputError
from medxai.reports import png_size, write_report
from medxai.reports.html import flatten, format_value


class Page(HTMLParser):
    """Elements (tag, attributes, text inside) of a page, with their enclosing elements' attributes."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": [e["attrs"] for e in self._open]}
        self.elements.append(element)
        if tag not in ("img", "meta", "br", "link"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in attrs.items())]


def _page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_bundle_finalize_writes_an_index_and_one_page_per_case(ensemble_run, lung_run):
    for run, cases in ((ensemble_run, sorted(CASES)), (lung_run, ["cxr_0003", "cxr_0004"])):
        report = run.output_dir / "report"
        assert sorted(p.name for p in report.iterdir()) == sorted([*(f"{c}.html" for c in cases), "index.html"])


def test_case_page_shows_every_explainers_overlay_probabilities_boxes_and_sentence(ensemble_run):
    for case, (probs, _) in CASES.items():
        page = _page(ensemble_run.output_dir / "report" / f"{case}.html")
        sections = page.find("section")
        assert [s["attrs"]["data-method"] for s in sections] == METHODS
        for method in METHODS:
            folder = ensemble_run.output_dir / method / case
            summary = json.loads((folder / f"{case}_summary.json").read_text())
            in_section = [e for e in page.elements if {"class": "view", "data-method": method} in e["parents"]]
            # one <img> per PNG of the case folder (overlay, input), the PNG's own bytes and size
            figures = [e for e in in_section if e["tag"] == "figure"]
            images = [e for e in in_section if e["tag"] == "img"]
            assert sorted(f["attrs"]["data-file"] for f in figures) == sorted(p.name for p in folder.glob("*.png"))
            for figure, image in zip(figures, images):
                data = (folder / figure["attrs"]["data-file"]).read_bytes()
                assert image["attrs"]["src"] == "data:image/png;base64," + base64.b64encode(data).decode()
                assert (int(image["attrs"]["width"]), int(image["attrs"]["height"])) == png_size(data) == (40, 48) or \
                    figure["attrs"]["data-file"].endswith("_input.png")
            # probabilities: exact values in data-value, rounded text, the predicted class marked
            table = [e for e in in_section if e["tag"] == "td" and {"class": "probabilities"} in e["parents"]]
            assert [float(td["attrs"]["data-value"]) for td in table] == list(summary["probabilities"].values())
            assert [td["text"] for td in table] == [format_value(p) for p in summary["probabilities"].values()]
            assert [p for p in summary["probabilities"].values()] == pytest.approx(probs)
            predicted = [e for e in in_section if e["tag"] == "tr" and e["attrs"].get("class") == "predicted"]
            marked = [e["text"] for e in in_section if e["tag"] == "th" and predicted and predicted[0]["attrs"] in e["parents"]]
            assert marked == [summary["predicted_class"]]
            # boxes: the boxes JSON, one row each; the blob's box is the one the writer found
            boxes = json.loads((folder / f"{case}_boxes.json").read_text())["boxes"]
            rows = [e for e in in_section if e["tag"] == "tr" and {"class": "boxes"} in e["parents"]][1:]
            assert len(rows) == len(boxes) == 1
            cells = [e for e in in_section if e["tag"] == "td" and {"class": "boxes"} in e["parents"]]
            by_column = dict(zip(["min", "max", "num_voxels", "score_max", "score_mean", "area_mm2"], cells))
            assert by_column["min"]["text"] == " ".join(map(str, boxes[0]["min"]))
            assert int(by_column["num_voxels"]["attrs"]["data-value"]) == boxes[0]["num_voxels"]
            rows_, cols = CASES[case][1]
            assert boxes[0]["num_voxels"] == (rows_.stop - rows_.start) * (cols.stop - cols.start)
            # the sentence, as text (escaped in the file: no element made of it)
            sentence = [e["text"] for e in in_section if e["tag"] == "p" and e["attrs"].get("class") == "sentence"]
            assert sentence == [summary["sentence"]]
        assert not page.find("script") and not page.find("b")
    raw = (ensemble_run.output_dir / "report" / "cxr_0002.html").read_text()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in raw
    assert ODD_SENTENCE in [e["text"] for e in _page(ensemble_run.output_dir / "report" / "cxr_0002.html").find("p")]


def test_index_lists_cases_with_labels_and_the_numbers_of_the_csv_and_metrics(ensemble_run):
    page = _page(ensemble_run.output_dir / "report" / "index.html")
    rows = page.find("tr")
    case_rows = [r for r in rows if "data-case" in r["attrs"]]
    assert [r["attrs"]["data-case"] for r in case_rows] == sorted(CASES)
    links = [a["attrs"]["href"] for a in page.find("a")]
    assert links == [f"{case}.html" for case in sorted(CASES)]
    header = [th["text"] for th in page.elements if th["tag"] == "th" and {"class": "cases"} in th["parents"]]
    # columns the same for both explainers (probabilities, one box each) are shown once; sentences per explainer
    assert header == ["case", "reference label", "predicted_class", *(f"probability_{c}" for c in ("normal", "pneumonia", "covid19")),
                      "num_boxes", "gradcam: sentence", "lrp: sentence"]  # fmt: skip
    gradcam = {row["case"]: row for row in _rows(ensemble_run.output_dir / "gradcam" / "predictions.csv")}
    labels = {row["case"]: row["label_name"] for row in _rows(ensemble_run.eval_dir / "predictions.csv")}
    for row in case_rows:
        case = row["attrs"]["data-case"]
        cells = [e for e in page.elements if e["tag"] == "td" and row["attrs"] in e["parents"]]
        assert cells[1]["text"] == labels[case]
        assert cells[2]["text"] == gradcam[case]["predicted_class"]
        assert [c["attrs"]["data-value"] for c in cells[3:6]] == [gradcam[case][f"probability_{c}"] for c in ("normal", "pneumonia", "covid19")]
        assert cells[6]["attrs"]["data-value"] == gradcam[case]["num_boxes"] == "1"
        assert cells[7]["text"] == gradcam[case]["sentence"] and cells[8]["text"].endswith(
            "LRP is not located by lung zone; see the boxes." if case != "cxr_0002" else ODD_SENTENCE
        )
    # metrics: every scalar of metrics.json, exact; the confusion matrix; the ROC figure; the failed case
    metrics = json.loads((ensemble_run.eval_dir / "metrics.json").read_text())
    shown = {tr["attrs"]["data-key"]: tr for tr in page.find("tr") if {"class": "metrics", "data-source": "evaluation/metrics.json"} in tr["parents"]}
    scalars = flatten({k: v for k, v in metrics.items() if k != "curves"})  # the curves' points are figures
    assert set(shown) == {key for key, _ in scalars} and "macro.f1" in shown and "accuracy" in shown
    for key, value in scalars:
        cell = [e for e in page.elements if e["tag"] == "td" and shown[key]["attrs"] in e["parents"]][0]
        assert (float(cell["attrs"]["data-value"]) == value) if isinstance(value, float) else cell["text"] == format_value(value)
    confusion = [int(td["text"]) for td in page.elements if td["tag"] == "td" and {"class": "confusion"} in td["parents"]]
    assert confusion == [v for row in metrics["confusion_matrix"] for v in row]
    assert [f["attrs"]["data-file"] for f in page.find("figure")] == ["roc.png"]
    bad = [td["text"] for td in page.elements if td["tag"] == "td" and {"class": "bad-cases"} in td["parents"]]
    assert bad == ["cxr_0009", "truncated PNG <100 bytes>"]


def test_segmentation_report_shows_each_map_and_the_csv_values(lung_run):
    page = _page(lung_run.output_dir / "report" / "index.html")
    predictions = _rows(lung_run.output_dir / "predictions.csv")
    case_rows = [r for r in page.find("tr") if "data-case" in r["attrs"]]
    assert [r["attrs"]["data-case"] for r in case_rows] == [row["case"] for row in predictions]
    for row, expected in zip(case_rows, predictions):
        cells = [e for e in page.elements if e["tag"] == "td" and row["attrs"] in e["parents"]]
        assert [c["attrs"].get("data-value") for c in cells[1:]] == [expected[k] for k in ("lung_pixels", "lung_fraction", "x0", "x1", "y0", "y1")]
    dice = [tr for tr in page.find("tr") if tr["attrs"].get("data-key") == "mean_dice"]
    assert dice[0]["text"] == "mean_dice0.875"
    case = _page(lung_run.output_dir / "report" / "cxr_0004.html")
    assert [f["attrs"]["data-file"] for f in case.find("figure")] == ["cxr_0004_gradcam_lung.png", "cxr_0004_lung.png", "cxr_0004_lung_cropped.png"]
    assert [(int(i["attrs"]["width"]), int(i["attrs"]["height"])) for i in case.find("img")] == [(56, 64), (64, 64), (48, 64)]
    details = {tr["attrs"]["data-key"]: tr["text"] for tr in case.find("tr") if "data-key" in tr["attrs"]}
    assert details["lung_pixels"] == "lung_pixels791" and details["bounding_box"] == "bounding_box2 60 5 58"
    assert not case.find("table", **{"class": "probabilities"}) and not case.find("p", **{"class": "sentence"})


def test_report_is_self_contained_and_deterministic(ensemble_run, tmp_path):
    first = write_report(ensemble_run.output_dir, ensemble_run.eval_dir, report_dir=tmp_path / "a", title="t")
    second = write_report(ensemble_run.output_dir, ensemble_run.eval_dir, report_dir=tmp_path / "b", title="t")
    names = sorted(p.name for p in first.parent.iterdir())
    assert names == sorted(p.name for p in second.parent.iterdir())
    for name in names:
        text = (first.parent / name).read_text()
        assert text == (second.parent / name).read_text()
        assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
        srcs = [e["attrs"]["src"] for e in Page(text).find("img")]
        assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)


def test_missing_folders_and_foreign_files_are_clear_errors(ensemble_run, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no '<case>/<case>_summary.json'"):
        write_report(tmp_path)
    with pytest.raises(InputError, match="evaluation folder .* does not exist"):
        write_report(ensemble_run.output_dir, tmp_path / "no_eval", report_dir=tmp_path / "r")
    index = write_report(ensemble_run.output_dir, tmp_path / "no_eval", report_dir=tmp_path / "r", eval_optional=True)
    assert "No evaluation folder was given." in index.read_text()
    with pytest.raises(InputError, match="not a PNG"):
        png_size(b"GIF89a" + bytes(30), "x.png")


def test_report_command_writes_the_pages(lung_run, tmp_path, capsys):
    report_command(str(lung_run.output_dir), eval_dir=str(lung_run.eval_dir), report_dir=str(tmp_path), title="lungs")
    assert "2 case pages" in capsys.readouterr().out
    assert (tmp_path / "index.html").read_bytes() == (lung_run.output_dir / "report" / "index.html").read_bytes().replace(
        b"cxr_lung_segmentation", b"lungs"
    )


def test_numbers_are_shown_rounded_and_kept_exact():
    assert [format_value(v) for v in (0.599763810634613, 5480180.33550051, 47631.94, 1e-05, 3, None, True)] == [
        "0.5998", "5,480,180.3", "47,631.9", "1e-05", "3", "n/a", "yes",
    ]  # fmt: skip
    assert format_value(float("nan")) == "n/a" and format_value([4, 11, 0]) == "4 11 0"
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": list(range(17)), "e": [{"x": 1}]}) == [("a.b", 1), ("a.c", [1, 2])]
