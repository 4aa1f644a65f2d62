"""Fault-tolerant, resumable explanation: the shared errors file, per-case failures and resuming, handler by handler.

- :class:`~medxai.data.fault_tolerant.BadCaseLog` and :class:`~medxai.data.fault_tolerant.SkipFailedCases`
  (an evaluator's postprocessing that fails on one case);
- :class:`~medxai.engines.explain_handlers.SuperpixelExplanationHandler` and
  :class:`~medxai.engines.explanation_comparison.ExplanationComparisonHandler`: a case whose explanation raises
  ``InputError`` is recorded and the others are written; a second run reuses the finished cases (no explainer
  call, files untouched) with outputs equal to the first run's; changed settings, weights or inputs, a
  missing overlay, a truncated JSON and ``resume=False`` recompute.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, Lambdad

from medxai.data.fault_tolerant import (
    BadCaseLog,
    FaultTolerantDataLoader,
    FaultTolerantDataset,
    SkipFailedCases,
)
from medxai.data.privacy import pseudonym
from medxai.engines.explain_handlers import SuperpixelExplanationHandler, network_digest, tensor_digest
from medxai.engines.explanation_comparison import ExplanationComparisonHandler
from medxai.errors import DatasetError, InputError
from medxai.networks import CTMILNet
from test_explanation_comparison import REGION, RegionModel  # the sibling test module's model

H = W = 24

# ------------------------------------------------------------------------------------------ the errors file


def test_bad_case_log_lists_sources_in_order_each_entry_once_and_rewrites_atomically(tmp_path):
    path = tmp_path / "out" / "bad_cases.json"
    log = BadCaseLog(path)
    loader, handler, second_loader = log.new_source("loader"), log.new_source("explanation"), log.new_source("loader")
    log.add(handler, "ct_2", "InputError: too small")
    assert json.loads(path.read_text()) == [{"case": "ct_2", "error": "InputError: too small"}]
    log.replace(loader, [{"case": "ct_1", "error": "InputError: missing"}])
    log.replace(second_loader, [{"case": "ct_1", "error": "InputError: missing"}, {"case": "ct_3", "error": "E: x"}])
    # sources in creation order; the second loader's repeat of ct_1 is listed once
    assert json.loads(path.read_text()) == [
        {"case": "ct_1", "error": "InputError: missing"},
        {"case": "ct_2", "error": "InputError: too small"},
        {"case": "ct_3", "error": "E: x"},
    ]
    log.replace(loader, [])  # a new pass of the first loader replaces its own entries only
    assert [e["case"] for e in json.loads(path.read_text())] == ["ct_2", "ct_1", "ct_3"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["bad_cases.json"]  # no temporary file left
    with pytest.raises(InputError, match="unknown bad-case source"):
        log.add("nobody", "a", "b")
    with pytest.raises(InputError, match="report_path .* and bad_case_log's path .* differ"):
        FaultTolerantDataLoader(FaultTolerantDataset([]), report_path=tmp_path / "other.json", bad_case_log=log)


def _read_or_fail(data: dict) -> dict:
    if data["image"].startswith("/site/missing"):
        raise InputError(f"image file or folder {data['image']} does not exist.")
    return {**data, "loaded": 1}


def test_two_loaders_and_a_failing_postprocessing_share_one_file(tmp_path):
    """As an explain job with two evaluators: the loaders' bad cases and a postprocessing failure, once each,
    named by file name (the folder stays out), and a new log (a new run) starts a fresh file."""
    records = [{"image": f"/site/{name}.png"} for name in ("a", "missing_b", "c", "d")]
    log = BadCaseLog(tmp_path / "bad_cases.json")

    def loader() -> FaultTolerantDataLoader:
        dataset = FaultTolerantDataset(records, _read_or_fail, case_name_fn=lambda s: Path(s).stem)
        return FaultTolerantDataLoader(dataset, batch_size=2, bad_case_log=log, collate_fn=lambda items: items)

    def explain(data: dict) -> dict:
        if data["image"] == "/site/c.png":
            raise InputError(f"slice of {data['image']} is too small for 12 superpixels.")
        if data["image"] == "/site/typo.png":
            raise TypeError("a programming error")
        return {**data, "map": 1}

    first, second = loader(), loader()  # sources are listed in the order they were made
    post = SkipFailedCases(Compose([Lambdad("image", lambda x: x), explain]), bad_case_log=log,
                           case_name_fn=lambda s: Path(s).stem)  # fmt: skip
    explained = [post(item) for batch in first for item in batch]
    assert [("map" in item, item["image"]) for item in explained] == [
        (True, "/site/a.png"), (False, "/site/c.png"), (True, "/site/d.png")
    ]
    assert sum(len(batch) for batch in second) == 3
    assert json.loads((tmp_path / "bad_cases.json").read_text()) == [
        {"case": "missing_b", "error": "InputError: image file or folder missing_b does not exist."},
        {"case": "c", "error": "InputError: slice of c is too small for 12 superpixels."},
    ]
    assert [bad.case for bad in post.failed] == ["c"]
    with pytest.raises(RuntimeError, match="applying transform") as raised:  # never swallowed (Compose wraps it)
        post({"image": "/site/typo.png"})
    root = raised.value
    while root.__cause__ is not None:
        root = root.__cause__
    assert isinstance(root, TypeError) and len(post.failed) == 1
    BadCaseLog(tmp_path / "bad_cases.json").write()
    assert json.loads((tmp_path / "bad_cases.json").read_text()) == []


def test_skip_failed_cases_keeps_a_monai_evaluator_going(tmp_path):
    """In a SupervisedEvaluator's postprocessing: the failing case keeps its plain prediction, the others get
    their map, and the evaluator runs to the end."""
    images = [
        MetaTensor(torch.full((1, 4, 4), float(i)), meta={"filename_or_obj": f"/d/PAT {i}.png"}) for i in range(3)
    ]

    def heatmap(pred: torch.Tensor) -> torch.Tensor:
        if float(pred.sum()) == 16.0:  # the image of case 1
            raise InputError("the map of this case is all zero, nothing to normalise.")
        return pred * 2

    log = BadCaseLog(tmp_path / "bad_cases.json")
    post = SkipFailedCases(Lambdad("pred", heatmap, overwrite="map"), bad_case_log=log, case_name_fn=pseudonym)
    maps = []
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader([{"image": i} for i in images], batch_size=3),
        network=torch.nn.Identity(), postprocessing=post,
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], None),
    )  # fmt: skip
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: maps.extend("map" in o for o in e.state.output))
    evaluator.run()
    assert maps == [True, False, True]
    entry = json.loads(log.path.read_text())
    assert entry == [{"case": pseudonym("/d/PAT 1.png"), "error": "InputError: the map of this case is all zero, "
                      "nothing to normalise."}]  # fmt: skip


# ----------------------------------------------------------------------------- superpixel explanation handler


def _net() -> CTMILNet:
    torch.manual_seed(0)
    return CTMILNet(backbone="tiny", section_length=3, k=2, use_ncm=False).eval()


def _volume(seed: int, depth: int = 4) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:H, :W]
    volume = np.full((H, W, depth), 0.1)
    for z in range(depth):
        for _ in range(3):
            r, c, radius = rng.uniform(4, H - 4), rng.uniform(4, W - 4), rng.uniform(2.5, 4)
            volume[..., z] += 0.6 * ((rows - r) ** 2 + (cols - c) ** 2 < radius**2)
    return torch.as_tensor(np.clip(volume + 0.02 * rng.standard_normal(volume.shape), 0, 1), dtype=torch.float32)[None]


def _case(name: str, seed: int) -> dict:
    return {"image": MetaTensor(_volume(seed), meta={"filename_or_obj": f"/data/{name}.nii.gz"})}


def _run(handler, items: list[dict], batch: int = 2) -> Engine:
    def step(engine: Engine, output):
        engine.state.batch = []
        return output

    engine = Engine(step)
    handler.attach(engine)
    engine.run([items[i : i + batch] for i in range(0, len(items), batch)], max_epochs=1)
    return engine


class Counting:
    """An explainer wrapper that counts calls and raises InputError on slices whose mean is ``fail_mean``."""

    def __init__(self, explainer, fail_mean: float | None = None) -> None:
        self.explainer, self.fail_mean, self.calls = explainer, fail_mean, 0

    def __call__(self, image, target, **kwargs):
        self.calls += 1
        if self.fail_mean is not None and abs(float(image.mean()) - self.fail_mean) < 1e-6:
            raise InputError("slice has fewer than 2 superpixels; LIME needs at least 2.")
        return self.explainer(image, target, **kwargs)

    def __getattr__(self, name):
        return getattr(self.explainer, name)


def _handler(out: Path, net: CTMILNet, log: BadCaseLog | None = None, **kwargs) -> SuperpixelExplanationHandler:
    settings = {"top_k": 1, "num_samples": 24, "n_segments": 6, "seed": 1, "batch_size": 32, **kwargs}
    handler = SuperpixelExplanationHandler(out, network=net, bad_case_log=log, **settings)
    handler.explainers = {m: Counting(e) for m, e in handler.explainers.items()}
    return handler


def _files(out: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}  # fmt: skip


def _calls(handler) -> int:
    return sum(e.calls for e in handler.explainers.values())


def _without_runtimes(path: Path) -> dict:
    record = json.loads(path.read_text())
    for entries in record["methods"].values():
        for entry in entries:
            del entry["runtime_s"], entry["segmentation_runtime_s"]
    return record


def test_a_failing_case_is_recorded_and_the_others_are_written(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medxai")
    net = _net()
    flat = {"image": MetaTensor(torch.full((1, H, W, 4), 0.25), meta={"filename_or_obj": "/data/flat_7.nii.gz"})}
    cases = [_case("ct_1", 1), flat, _case("ct_3", 3)]
    log = BadCaseLog(tmp_path / "bad_cases.json")
    handler = _handler(tmp_path / "out", net, log)
    handler.explainers["lime"].fail_mean = 0.25
    _run(handler, cases)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct_1", "ct_3"]
    for case in ("ct_1", "ct_3"):
        record = json.loads((tmp_path / "out" / case / f"{case}_superpixels.json").read_text())
        assert record["case"] == case and len(record["methods"]["lime"]) == 1
    assert json.loads(log.path.read_text()) == [
        {"case": "flat_7", "error": "InputError: slice has fewer than 2 superpixels; LIME needs at least 2."}
    ]
    assert (handler.cases_computed, handler.cases_reused, [b.case for b in handler.failed_cases]) == (2, 0, ["flat_7"])
    assert "2 case(s) computed, 0 reused from an earlier run with the same settings, 1 failed" in caplog.text

    # a programming error is not a bad case: it stops the run
    broken = _handler(tmp_path / "broken", net)
    broken.explainers["lime"].explainer = lambda *a, **k: (_ for _ in ()).throw(TypeError("bad argument"))
    with pytest.raises(TypeError, match="bad argument"):
        _run(broken, [_case("ct_1", 1)])
    # every case failing ends the run with an error naming the first
    failing = _handler(tmp_path / "failing", net)
    failing.explainers["lime"].fail_mean = 0.25
    with pytest.raises(DatasetError, match="all 1 case.*first: flat_7: InputError: slice has fewer"):
        _run(failing, [flat])
    strict = _handler(tmp_path / "strict", net, skip_failed_cases=False)
    strict.explainers["lime"].fail_mean = 0.25
    with pytest.raises(InputError, match="fewer than 2 superpixels"):
        _run(strict, [flat])


def test_a_second_run_reuses_finished_cases_and_changes_recompute(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medxai")
    net, out = _net(), tmp_path / "out"
    cases = [_case(f"ct_{i}", i) for i in range(3)]
    first = _handler(out, net)
    _run(first, cases)
    assert (first.cases_computed, _calls(first)) == (3, 6)  # 3 cases x 2 methods x top_k 1
    files = _files(out)
    record = json.loads((out / "ct_0" / "ct_0_superpixels.json").read_text())
    assert record["provenance"]["network_sha256"] == network_digest(net)
    assert record["provenance"]["input_sha256"] == tensor_digest(cases[0]["image"].float())

    again = _handler(out, net)
    _run(again, cases)
    assert (again.cases_computed, again.cases_reused, _calls(again)) == (0, 3, 0)
    assert _files(out) == files  # not a byte, inode or mtime changed
    assert "0 case(s) computed, 3 reused from an earlier run with the same settings" in caplog.text

    # a run killed after ct_0: its JSON is the mark, a half-written case (PNGs, no JSON) is recomputed
    killed = tmp_path / "killed"
    _run(_handler(killed, net), cases[:1])
    overlay = json.loads((out / "ct_1" / "ct_1_superpixels.json").read_text())["methods"]["lime"][0]["overlay"]
    (killed / "ct_1").mkdir()
    (killed / "ct_1" / overlay).write_bytes(b"\x89PNG half")
    resumed = _handler(killed, net)
    _run(resumed, cases)
    assert (resumed.cases_computed, resumed.cases_reused) == (2, 1)
    for case in ("ct_0", "ct_1", "ct_2"):
        name = f"{case}_superpixels.json"
        assert _without_runtimes(killed / case / name) == _without_runtimes(out / case / name)
        for png in (out / case).glob("*.png"):
            assert (killed / case / png.name).read_bytes() == png.read_bytes()
    assert (killed / "ct_1" / overlay).read_bytes() == (out / "ct_1" / overlay).read_bytes()  # rewritten

    # what invalidates a stored case
    (out / "ct_1" / overlay).unlink()
    (out / "ct_2" / "ct_2_superpixels.json").write_text('{"case": "ct_2", "meth')  # truncated by hand
    partial = _handler(out, net)
    _run(partial, cases)
    assert (partial.cases_computed, partial.cases_reused) == (2, 1)
    changed = _handler(out, net, num_samples=32)  # other settings
    _run(changed, cases)
    assert (changed.cases_computed, changed.cases_reused) == (3, 0)
    assert json.loads((out / "ct_0" / "ct_0_superpixels.json").read_text())["settings"]["num_samples"] == 32
    with torch.no_grad():
        next(net.parameters()).add_(0.01)  # other weights
    reweighted = _handler(out, net, num_samples=32)
    _run(reweighted, cases)
    assert (reweighted.cases_computed, reweighted.cases_reused) == (3, 0)
    other_input = _handler(out, net, num_samples=32)
    _run(other_input, [_case("ct_0", 9), cases[1], cases[2]])  # same name, other image
    assert (other_input.cases_computed, other_input.cases_reused) == (1, 2)
    forced = _handler(out, net, num_samples=32, resume=False)
    _run(forced, cases)
    assert (forced.cases_computed, forced.cases_reused, _calls(forced)) == (3, 0, 6)
    with pytest.raises(InputError, match="resume must be true or false, got 'false'"):
        _handler(out, net, resume="false")  # a string from a command line is not silently truthy


# ------------------------------------------------------------------------------ explanation comparison handler



class Oracle:
    """The region as the map, with a call count; raises InputError for an image whose mean is ``fail_mean``."""

    def __init__(self, fail_mean: float | None = None) -> None:
        self.fail_mean, self.calls = fail_mean, 0

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        means = x.flatten(1).mean(1)
        if self.fail_mean is not None and bool((means - self.fail_mean).abs().lt(1e-6).any()):
            raise InputError("the map of this image is constant; nothing to rank.")
        return REGION.expand(x.shape[0], 1, 8, 8) * (1.0 + 0.1 * means.view(-1, 1, 1, 1))


def _items(values: list[float]) -> list[dict]:
    return [
        {"image": MetaTensor(torch.full((1, 8, 8), v), meta={"filename_or_obj": f"/x/cxr_{i}.png"}),
         "label": torch.tensor(1), "lesion": REGION[0].clone()}
        for i, v in enumerate(values)
    ]  # fmt: skip


def _compare(out: Path, items: list[dict], explainer: Oracle, batch: int = 2, **kwargs) -> ExplanationComparisonHandler:
    handler = ExplanationComparisonHandler(
        {"oracle": explainer}, out, model=RegionModel(), lesion_key="lesion", n_bootstrap=50, **kwargs
    )

    def step(engine, data):
        engine.state.batch = data
        return data

    engine = Engine(step)
    handler.attach(engine)
    engine.run([items[i : i + batch] for i in range(0, len(items), batch)], max_epochs=1)
    return handler


def test_comparison_records_a_failing_case_and_keeps_its_batch_mate(tmp_path):
    log = BadCaseLog(tmp_path / "bad_cases.json")
    handler = _compare(tmp_path / "out", _items([1.0, 0.5, 2.0]), Oracle(fail_mean=0.5), bad_case_log=log)
    assert json.loads(log.path.read_text()) == [
        {"case": "cxr_1", "error": "InputError: the map of this image is constant; nothing to rank."}
    ]
    # cxr_0 (the failing case's batch-mate, then explained alone) and cxr_2 are in every output
    result = json.loads((tmp_path / "out" / "explanation_comparison.json").read_text())
    assert result["n_cases"] == 2 and result["methods"]["oracle"]["aoppc"]["n"] == 2
    rows = (tmp_path / "out" / "explanation_comparison.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["cxr_0", "cxr_2"]
    assert sorted(p.name for p in (tmp_path / "out" / "comparison_cases").iterdir()) == [
        "cxr_0_comparison.json", "cxr_2_comparison.json"
    ]
    # hand-computed: image of ones on the region (4 pixels): p = sigmoid(4); removing it leaves sigmoid(0)
    assert result["methods"]["oracle"]["aoppc"]["mean"] == pytest.approx(
        np.mean([1 / (1 + math.exp(-4 * v)) - 0.5 for v in (1.0, 2.0)]), abs=1e-6
    )
    assert (handler.cases_computed, len(handler.failed_cases)) == (2, 1)


def test_comparison_resume_reuses_whole_batches_with_identical_outputs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medxai")
    items = _items([1.0, 0.7, 2.0, 1.5, 0.3])
    reference = tmp_path / "reference"
    _compare(reference, items, Oracle())
    first = tmp_path / "resumed"
    _compare(first, items[:3], Oracle())  # stopped after 3 cases: batches [0, 1], [2]
    kept = _files(first / "comparison_cases")
    oracle = Oracle()
    resumed = _compare(first, items, oracle)  # batches [0, 1] (reused), [2, 3] (2 was alone: recomputed), [4]
    assert (resumed.cases_reused, resumed.cases_computed, oracle.calls) == (2, 3, 2)
    assert "ExplanationComparisonHandler: 3 case(s) computed, 2 reused" in caplog.text
    now = _files(first / "comparison_cases")
    assert {k: now[k] for k in ("cxr_0_comparison.json", "cxr_1_comparison.json")} == {
        k: kept[k] for k in ("cxr_0_comparison.json", "cxr_1_comparison.json")
    }
    for name in ("explanation_comparison.json", "explanation_comparison.csv", "perturbation_curves.png"):
        assert (first / name).read_bytes() == (reference / name).read_bytes(), name
    stored = json.loads((first / "comparison_cases" / "cxr_0_comparison.json").read_text())
    assert stored["curve_dtype"] == {"oracle": "float32"} and len(stored["methods"]["oracle"]["curve"]) == 11

    everything = Oracle()
    again = _compare(first, items, everything)
    assert (again.cases_reused, again.cases_computed, everything.calls) == (5, 0, 0)
    for name in ("explanation_comparison.json", "explanation_comparison.csv", "perturbation_curves.png"):
        assert (first / name).read_bytes() == (reference / name).read_bytes(), name
    changed = _compare(first, items, Oracle(), thresholds=[0.5, 1.0])
    assert (changed.cases_reused, changed.cases_computed) == (0, 5)
    forced = _compare(first, items, Oracle(), thresholds=[0.5, 1.0], resume=False)
    assert (forced.cases_reused, forced.cases_computed) == (0, 5)
    other_images = _compare(first, _items([1.0, 0.7, 2.0, 1.5, 0.9]), Oracle(), thresholds=[0.5, 1.0])
    assert (other_images.cases_reused, other_images.cases_computed) == (4, 1)
