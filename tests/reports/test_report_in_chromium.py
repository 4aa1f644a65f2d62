"""The report as a browser shows it: headless Chromium renders the pages from disk (``--dump-dom``), and the
rendered DOM holds the case rows and links, one decodable PNG per overlay, the sentences, probabilities and
boxes. Skipped where no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_outputs import CASES, METHODS

from medxai.reports import png_size

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome on PATH")


class Dom(HTMLParser):
    """Start tags with their attributes, and all text, of a dumped DOM."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def render(page: Path, tmp_path: Path) -> Dom:
    """The DOM Chromium builds from ``page`` (no network: the pages must need none)."""
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "<html" in result.stdout, result.stderr[-2000:]
    return Dom(result.stdout)


def test_chromium_renders_the_cohort_page_with_a_row_and_link_per_case(ensemble_run, tmp_path):
    dom = render(ensemble_run.output_dir / "report" / "index.html", tmp_path)
    assert [row["data-case"] for row in dom.all("tr") if "data-case" in row] == sorted(CASES)
    assert [a["href"] for a in dom.all("a")] == [f"{case}.html" for case in sorted(CASES)]
    images = dom.all("img")
    assert len(images) == 1  # the ROC curve of the evaluation
    data = base64.b64decode(images[0]["src"].removeprefix("data:image/png;base64,"))
    assert data == (ensemble_run.eval_dir / "roc.png").read_bytes() and png_size(data) == (60, 50)
    text = " ".join(dom.text)
    assert "cxr_0009" in text and "truncated PNG <100 bytes>" in text
    assert not [attrs for _, attrs in dom.tags for value in attrs.values() if value and value.startswith(("http:", "https:"))]


def test_chromium_renders_a_case_page_with_each_explainers_overlay(ensemble_run, tmp_path):
    case = "cxr_0001"
    dom = render(ensemble_run.output_dir / "report" / f"{case}.html", tmp_path)
    pngs = [f"{method}/{case}/{name}" for method in METHODS for name in (f"{case}_input.png", f"{case}_overlay.png")]
    assert [f["data-file"] for f in dom.all("figure")] == [path.split("/")[-1] for path in pngs]
    for image, path in zip(dom.all("img"), pngs):
        assert image["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"))
        assert data == (ensemble_run.output_dir / path).read_bytes()
        assert png_size(data) == (int(image["width"]), int(image["height"]))
        if path.endswith("_overlay.png"):
            assert png_size(data) == (40, 48)  # one image pixel per PNG pixel, image (1, 40, 48)
    text = " ".join(dom.text)
    for method in METHODS:
        summary = json.loads((ensemble_run.output_dir / method / case / f"{case}_summary.json").read_text())
        assert summary["sentence"] in text
        boxes = json.loads((ensemble_run.output_dir / method / case / f"{case}_boxes.json").read_text())["boxes"]
        assert [b["num_voxels"] for b in boxes] == [200]
    values = [td["data-value"] for td in dom.all("td") if td.get("data-value")]
    for probability in (0.2, 0.3, 0.5):  # float32 probabilities of the writer, exact in data-value
        assert sum(abs(float(v) - probability) < 1e-7 for v in values) == len(METHODS)
    assert "200" in values and "5 10" in text and "14 29" in text  # box corners (rows 5-14, columns 10-29)
