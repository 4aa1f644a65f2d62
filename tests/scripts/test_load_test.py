"""``scripts/reliability/load_test.py --quick``: 22 cases through the CT MIL bundle's inference, every bad input
and fault recorded with its reason, no good case lost, memory within the bound; and the accounting itself
catches a lost good case and an unrecorded bad one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reliability" / "load_test.py"

#: What each bad input's (or fault's) recorded reason must say, as the loaders and checks word it.
REASONS = {
    "missing": "does not exist",
    "truncated_nifti": "EOFError: Compressed file ended",
    "text_as_nifti": "is not a gzip file",
    "empty_file": "Empty file",
    "nan_volume": "100 NaN and 0 infinite voxel(s)",
    "inf_volume": "0 NaN and 1 infinite voxel(s)",
    "too_short": "holds no voxels",
    "image_2d": "2D image of shape (1, 48, 48)",
    "four_d": "3 channels, shape (3, 48, 48, 16)",
    "empty_folder": "holds no DICOM image files",
    "deleted_during_run": "does not exist",
    "truncated_during_run": "EOFError: Compressed file ended",
    "not_a_file": "Empty file",  # nibabel sees a socket as a file of size 0
    "permission_denied": "Permission denied",
}


def _load_script():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    module = _load_script()
    work = tmp_path_factory.mktemp("load_test")
    status = module.main(["--quick", "--work", str(work / "run"), "--results", str(work / "results.json")])
    return module, work, status, json.loads((work / "results.json").read_text())


def test_quick_load_test_accounts_for_every_case(quick):
    module, work, status, result = quick
    assert status == 0 and result["failures"] == [] and result["exit_status"] == 0
    assert result["cases_tried"] == 22 and result["bad_inputs_tried"] == len(module.BAD_KINDS) == 10
    assert result["faults_injected"] == len(module.FAULTS) == 4
    as_root = os.geteuid() == 0  # root reads a chmod 000 file: that fault is then not enforced
    expected_bad = 10 + 4 - as_root
    assert result["bad_cases_expected"] == result["bad_cases_recorded"] == expected_bad
    assert result["good_cases_expected"] == result["good_cases_written"] == 12 - 4 + as_root
    assert result["lost_cases"] == [] and result["unrecorded_bad_cases"] == []
    kinds = sorted(k for k in REASONS if k != "permission_denied" or not as_root)
    assert sorted(b["kind"] for b in result["bad"]) == kinds
    for bad in result["bad"]:
        assert REASONS[bad["kind"]] in bad["reason"], bad
        assert bad["case"] in bad["reason"] or bad["kind"] in ("nan_volume", "inf_volume", "image_2d", "four_d")
    # the faults during the run came once a quarter of the good cases was written, before their cases were read
    assert result["during_run_faults_after_good_cases_written"] >= (12 - 2) // 4
    memory = result["memory"]
    assert 0 < memory["rss_start_mib"] <= memory["peak_rss_mib"]
    assert memory["max_growth_mib"] == pytest.approx(
        memory["rss_max_after_warmup_mib"] - memory["rss_after_warmup_mib"], abs=0.11)
    assert memory["growth_bound_mib"] == pytest.approx(0.1 * memory["rss_after_warmup_mib"], abs=0.11)
    assert memory["max_growth_mib"] <= memory["growth_bound_mib"]
    throughput = result["throughput"]
    assert throughput["first_quarter_cases_per_s"] > 0 and throughput["last_quarter_cases_per_s"] > 0


def test_the_accounting_catches_a_lost_and_an_unrecorded_case(quick):
    module, work, _, result = quick
    run = work / "run"
    # rebuild the case list as the script made it, from the results (names and kinds)
    kinds = {b["case"]: b["kind"] for b in result["bad"]}
    datalist = json.loads((run / "data" / "datalist.json").read_text())["test"]
    from medxai.transforms.outputs import output_case_name

    cases = []
    for record in datalist:
        name = output_case_name(record["image"])
        case = module.Case(name, Path(record["image"]), kinds.get(name, "good"))
        cases.append(case)
    monitor = module.Monitor(pid=0, out=run / "out", interval=0.25, faulted=[], fault_after=1)
    good = next(c for c in cases if c.kind == "good")
    bad = next(c for c in cases if c.kind == "missing")
    shutil.rmtree(run / "out" / good.name)  # a good case whose outputs are gone
    report = run / "out" / "bad_cases.json"
    report.write_text(json.dumps([e for e in json.loads(report.read_text()) if e["case"] != bad.name]))
    analysis = module.analyse(run, cases, 0, monitor, 10.0, 0.1, 0.1)
    assert analysis["lost_cases"] == [good.name] and analysis["unrecorded_bad_cases"] == [bad.name]
    assert f"1 good cases lost: {good.name}" in analysis["failures"]
    assert f"1 bad cases unrecorded: {bad.name}" in analysis["failures"]
