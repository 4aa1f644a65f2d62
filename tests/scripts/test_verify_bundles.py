"""Tests for ``scripts/verify_bundles.py`` (model-zoo checks of every bundle).

The MONAI checks start one Python process per bundle (about 5-10 s here), so the good fixture and one
copy carrying every MONAI-level breakage at once are each verified once per module and shared by the
tests; the file-level breakages run only the file-level checks, in this process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "good_bundle"
BUNDLES_ROOT = REPO_ROOT / "bundles"


def _load_script():
    spec = importlib.util.spec_from_file_location("verify_bundles", REPO_ROOT / "scripts" / "verify_bundles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


vb = _load_script()


def _copy_fixture(destination: Path) -> Path:
    bundle = destination / "good_bundle"
    shutil.copytree(FIXTURE, bundle, ignore=shutil.ignore_patterns("eval", "model.pt", "model.ts"))
    return bundle


def _edit_json(path: Path, edit) -> None:
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=4))


def _fixture_network(**overrides) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(FIXTURE / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[f"network_def#{key}"] = value
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def")


def _require_local_schema() -> None:
    if vb.default_schema() is None:
        pytest.skip(f"model-zoo schema {vb.DEFAULT_SCHEMA} not present (verify_metadata would download it)")


def _statuses(report) -> dict[str, str]:
    return {r.check: r.status for r in report.results}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """The fixture with a saved state dict, verified through ``main`` from an unrelated working directory."""
    _require_local_schema()
    root = tmp_path_factory.mktemp("good")
    bundle = _copy_fixture(root)
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(_fixture_network().state_dict(), bundle / "models" / "model.pt")
    before = _snapshot(bundle)
    elsewhere = tmp_path_factory.mktemp("cwd")
    report_file = root / "report.json"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(elsewhere)
        code = vb.main([str(bundle), "--json", str(report_file)])
    return {
        "code": code,
        "stdout": out.getvalue(),
        "report": json.loads(report_file.read_text()),
        "bundle": bundle,
        "before": before,
        "cwd": elsewhere,
    }


@pytest.fixture(scope="module")
def broken_report(tmp_path_factory):
    """One copy with four independent MONAI-level breakages, each aimed at a different check."""
    _require_local_schema()
    bundle = _copy_fixture(tmp_path_factory.mktemp("broken"))

    def break_metadata(meta):
        del meta["copyright"]  # required by the model-zoo schema
        meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3  # the network gives 2

    _edit_json(bundle / "configs" / "metadata.json", break_metadata)
    _edit_json(bundle / "configs" / "train.json", lambda c: c["train"].pop("trainer"))
    (bundle / "models").mkdir(exist_ok=True)
    wrong = _fixture_network(growth_rate=4)  # state dict of another architecture: shapes do not match
    torch.save(wrong.state_dict(), bundle / "models" / "model.pt")
    return vb.verify_bundle(bundle)


# ------------------------------------------------------------------------------------------- good bundle


def test_good_fixture_passes_every_check(good_run):
    assert good_run["code"] == 0
    (report,) = good_run["report"]
    assert report["passed"] is True
    assert [r["check"] for r in report["results"]] == list(vb.CHECKS)
    assert {r["check"]: r["status"] for r in report["results"]} == dict.fromkeys(vb.CHECKS, "PASS")
    reasons = {r["check"]: r["reason"] for r in report["results"]}
    assert reasons["files"] == f"all {len(vb.REQUIRED_FILES)} required files present"
    assert reasons["metadata"] == "valid against meta_schema_20240725.json"
    assert reasons["net_in_out"] == "input (1, 1, 32, 32) gives 2 output channels of float32"
    # the same conv / batch-norm kernels run in TorchScript and eager mode: identical outputs
    assert reasons["ckpt_export"] == (
        "TorchScript export (configs/inference.json) loads; max |TorchScript - eager| = 0 on input (1, 1, 32, 32)"
    )
    assert reasons["config_json"] == "7 config files valid, no '#' in string values"


def test_good_run_prints_one_pass_row_per_check(good_run):
    lines = good_run["stdout"].splitlines()
    assert lines[0].split() == ["bundle", "check", "result", "reason"]
    rows = [line.split()[:3] for line in lines[2 : 2 + len(vb.CHECKS)]]
    assert rows == [["good_bundle", check, "PASS"] for check in vb.CHECKS]
    assert "1 bundle(s) verified: 1 passed, 0 failed" in good_run["stdout"]


def test_verification_leaves_bundle_and_working_directory_untouched(good_run):
    # instantiating the trainer opens TensorBoard writers under output_dir: that must happen on the copy
    assert _snapshot(good_run["bundle"]) == good_run["before"]
    assert list(good_run["cwd"].iterdir()) == []


def test_fixture_itself_is_clean_json_with_standard_keys():
    train = json.loads((FIXTURE / "configs" / "train.json").read_text())
    inference = json.loads((FIXTURE / "configs" / "inference.json").read_text())
    standard = ("bundle_root", "device", "dataset_dir", "network_def", "network", "val_interval")
    for key in (*standard, "initialize", "run", "training", "finalize"):
        assert key in train, key
    assert {"trainer", "dataset", "handlers"} <= set(train["train"]) and "evaluator" in train["validate"]
    assert {"preprocessing", "postprocessing", "inferer", "evaluator", "network_def"} <= set(inference)
    assert vb.check_config_json(FIXTURE).status == "PASS"


# ----------------------------------------------------------------------------------- MONAI-level failures


def test_broken_copy_fails_exactly_the_broken_checks(broken_report):
    assert not broken_report.passed
    assert _statuses(broken_report) == {
        "files": "PASS",
        "metadata": "FAIL",
        "changelog": "PASS",
        "train_properties": "FAIL",
        "infer_properties": "PASS",
        "net_in_out": "FAIL",
        "ckpt_export": "FAIL",
        "config_json": "PASS",
    }


def test_metadata_failure_names_the_missing_schema_field(broken_report):
    schema_url = json.loads((FIXTURE / "configs" / "metadata.json").read_text())["schema"]
    assert broken_report.result("metadata").reason == (
        f"ValueError: 'copyright' is a required property Failed validating against schema `{schema_url}`. "
        "(schema file: meta_schema_20240725.json)"
    )


def test_properties_failure_names_the_missing_trainer(broken_report):
    assert broken_report.result("train_properties").reason == (
        "configs/train.json: KeyError: \"Property 'trainer' with config ID 'train::trainer' not in the config.\""
    )


def test_net_in_out_failure_reports_channel_mismatch(broken_report):
    assert "output channel number `2` doesn't match: `3`" in broken_report.result("net_in_out").reason


def test_ckpt_export_runs_on_saved_state_dict_and_reports_mismatch(broken_report):
    reason = broken_report.result("ckpt_export").reason
    assert reason.startswith("configs/inference.json#network_def:")
    assert "size mismatch" in reason


def test_ckpt_export_uses_the_demo_overlay_a_checkpoint_was_trained_with(tmp_path):
    """After ``medxai demo`` the bundle holds a demo-sized checkpoint: the check exports it with demo.json."""
    from monai.bundle import ConfigParser

    bundle = tmp_path / "covid19_ct_mil_classification"
    shutil.copytree(BUNDLES_ROOT / bundle.name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("inference.json", "demo.json")])
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    result = vb.check_ckpt_export(bundle, bundle / "models" / "model.pt", "cpu", tmp_path)
    assert result.status == vb.PASS, result.reason
    assert result.reason.startswith("TorchScript export (configs/inference.json + configs/demo.json) loads")


# ------------------------------------------------------------------------------------ file-level failures


def _static(bundle: Path):
    return vb.verify_bundle(bundle, checks=vb.STATIC_CHECKS)


def test_missing_license_fails_files_only(tmp_path):
    bundle = _copy_fixture(tmp_path)
    (bundle / "LICENSE").unlink()
    report = _static(bundle)
    assert _statuses(report) == {"files": "FAIL", "changelog": "PASS", "config_json": "PASS"}
    assert report.result("files").reason == "missing LICENSE"


def test_missing_metadata_skips_checks_that_read_it(tmp_path):
    bundle = _copy_fixture(tmp_path)
    (bundle / "configs" / "metadata.json").unlink()
    report = vb.verify_bundle(bundle, checks=["files", "metadata", "changelog", "net_in_out"])
    assert _statuses(report) == {"files": "FAIL", "metadata": "SKIP", "changelog": "SKIP", "net_in_out": "SKIP"}
    assert report.result("files").reason == "missing configs/metadata.json"
    assert report.result("metadata").reason == "cannot run: configs/metadata.json is missing"


def test_removed_version_fails_changelog(tmp_path):
    bundle = _copy_fixture(tmp_path)
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.pop("version"))
    report = _static(bundle)
    assert report.result("changelog").status == "FAIL"
    assert report.result("changelog").reason == "configs/metadata.json has no 'version'"


def test_version_missing_from_changelog_fails_changelog(tmp_path):
    bundle = _copy_fixture(tmp_path)
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.update(version="0.2.0"))
    report = _static(bundle)
    assert _statuses(report) == {"files": "PASS", "changelog": "FAIL", "config_json": "PASS"}
    assert report.result("changelog").reason == "version '0.2.0' is not a key of changelog (keys: 0.1.0, 0.0.1)"


def test_hash_in_string_values_fails_config_json_naming_the_keys(tmp_path):
    bundle = _copy_fixture(tmp_path)
    _edit_json(bundle / "configs" / "inference.json", lambda c: c["handlers"][2].update(filename="predictions#1.csv"))
    _edit_json(bundle / "configs" / "train.json", lambda c: c.update(output_dir="$@bundle_root + '/eval#1'"))
    report = _static(bundle)
    assert _statuses(report) == {"files": "PASS", "changelog": "PASS", "config_json": "FAIL"}
    assert report.result("config_json").reason == (
        "configs/inference.json: '#' outside a config reference in handlers#2#filename; "
        "configs/train.json: '#' outside a config reference in output_dir"
    )


def test_invalid_and_duplicate_key_json_fail_config_json_and_skip_dependent_checks(tmp_path):
    bundle = _copy_fixture(tmp_path)
    train = bundle / "configs" / "train.json"
    train.write_text(train.read_text().replace('"val_interval": 1,', '"val_interval": 1,,'))
    demo = bundle / "configs" / "demo.json"
    demo.write_text('{"num_train": 8, "num_train": 4}')
    report = vb.verify_bundle(bundle, checks=["config_json", "train_properties"])
    reason = report.result("config_json").reason
    assert report.result("config_json").status == "FAIL"
    line = 1 + train.read_text().splitlines().index('    "val_interval": 1,,')
    assert reason == (
        "configs/demo.json is not valid JSON: duplicate key 'num_train'; "
        f"configs/train.json is not valid JSON: Expecting property name enclosed in double quotes at line {line} "
        "column 23"
    )
    assert report.result("train_properties").status == "SKIP"
    assert report.result("train_properties").reason == "cannot run: configs/train.json is not valid JSON"


def test_missing_checkpoint_skips_ckpt_export(tmp_path):
    report = vb.verify_bundle(_copy_fixture(tmp_path), checks=["ckpt_export"])
    assert report.passed
    expected = vb.CheckResult("ckpt_export", "SKIP", "no models/model.pt (checkpoints are not committed)")
    assert report.results == [expected]


def test_unreadable_or_pickled_checkpoint_fails_ckpt_export_without_running_its_code(tmp_path):
    import pickle

    class RunsCode:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (exec, ("open(__import__('os').environ['MEDXAI_TOUCHED'], 'w').close()",))

    bundle = _copy_fixture(tmp_path)
    touched = tmp_path / "touched"
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(pickle.dumps({"w": RunsCode()}))
    os.environ["MEDXAI_TOUCHED"] = str(touched)
    try:
        report = vb.verify_bundle(bundle, checks=["ckpt_export"])
    finally:
        del os.environ["MEDXAI_TOUCHED"]
    (result,) = report.results
    assert not report.passed and result.status == "FAIL"
    assert result.reason.startswith("model.pt: ") and "checkpoint" in result.reason and "cannot be read" in result.reason
    assert not touched.exists()


def test_cli_exits_1_and_prints_the_failing_row(tmp_path, capsys):
    bundle = _copy_fixture(tmp_path)
    (bundle / "LICENSE").unlink()
    code = vb.main([str(bundle), "--checks", "files,changelog,config_json"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line.split(None, 3) for line in out.splitlines()[2:5]]
    assert rows == [
        ["good_bundle", "files", "FAIL", "missing LICENSE"],
        ["good_bundle", "changelog", "PASS", "version '0.1.0' is in changelog"],
        ["good_bundle", "config_json", "PASS", "7 config files valid, no '#' in string values"],
    ]
    assert "1 bundle(s) verified: 0 passed, 1 failed (good_bundle)" in out


def test_unknown_bundle_name_fails_files(tmp_path):
    (target,) = vb.resolve_bundles(["no_such_bundle"], tmp_path)
    assert target == (tmp_path / "no_such_bundle").resolve()
    report = _static(target)
    assert _statuses(report) == {"files": "FAIL", "changelog": "SKIP", "config_json": "SKIP"}
    assert report.result("files").reason == f"bundle folder {target} does not exist"


def test_check_process_timeout_fails_every_requested_check(tmp_path):
    bundle = _copy_fixture(tmp_path)
    results = vb.run_monai_checks_isolated(bundle, ["metadata", "net_in_out"], None, "cpu", timeout=0.01)
    assert results == [
        vb.CheckResult("metadata", "FAIL", "checks did not finish within 0.01 s"),
        vb.CheckResult("net_in_out", "FAIL", "checks did not finish within 0.01 s"),
    ]


def test_check_process_crash_fails_every_requested_check_with_its_error(tmp_path):
    # the child accepts only MONAI checks: asking it for "files" makes it raise after copying the bundle
    bundle = _copy_fixture(tmp_path)
    results = vb.run_monai_checks_isolated(bundle, ["files", "metadata"], None, "cpu", timeout=120)
    assert [(r.check, r.status) for r in results] == [("files", "FAIL"), ("metadata", "FAIL")]
    assert results[0].reason.startswith("check process exited with code 1: ")
    assert results[0].reason.endswith("ValueError: 'files' is not a MONAI check; expected one of " + str(vb.MONAI_CHECKS))


# ------------------------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("value", "rewritten"),
    [
        ("plain text", False),
        ("@train#trainer", False),  # one reference
        ("@##val_interval", False),  # relative reference
        ("%train#postprocessing", False),  # macro
        ("%configs/train.json#network_def", False),  # macro into another file
        ("$@train#trainer.run()", False),  # references inside an expression
        ("$@train#handlers[: -2 if dist.get_rank() > 0 else None]", False),
        ("loss#1", True),  # plain text
        ("@train#trainer tail", True),  # not a whole reference, so plain text
        ("$@output_dir + '/map#1.png'", True),  # string literal inside an expression
        ("$print(1)  # comment", True),  # comment inside an expression
    ],
)
def test_hash_outside_references_matches_monai_rewriting(value, rewritten):
    from monai.bundle import ConfigParser

    assert vb.hash_outside_references(value) is rewritten
    # ground truth for the plain and reference cases: does MONAI hand back a different string?
    if not value.startswith(("$", "%")):
        parser = ConfigParser({"train": {"trainer": "T", "handlers": []}, "val_interval": 1, "x": {"y": value}})
        parsed = parser.get_parsed_content("x#y")
        assert (isinstance(parsed, str) and "::" in parsed) is rewritten


def test_iter_strings_builds_config_ids():
    config = {"a": {"b": ["x", {"c": "y"}], "n": 3}, "d": "z"}
    assert list(vb.iter_strings(config)) == [("a#b#0", "x"), ("a#b#1#c", "y"), ("d", "z")]


def test_compare_outputs_uses_allclose_bound():
    expected = torch.tensor([[1.0, -2.0]])
    # bound per element: 1e-5 + 1e-4 * |expected| = 1.1e-4 and 2.1e-4
    close, largest = vb.compare_outputs(expected + torch.tensor([[1e-4, 2e-4]]), expected)
    assert close and largest == pytest.approx(2e-4, rel=1e-3)
    close, largest = vb.compare_outputs(expected + torch.tensor([[1.2e-4, 0.0]]), expected)
    assert not close and largest == pytest.approx(1.2e-4, rel=1e-3)
    nested = {"b": expected, "a": (expected, expected)}
    close, largest = vb.compare_outputs(nested, {"a": (expected, expected), "b": expected})
    assert close and largest == 0.0
    with pytest.raises(ValueError, match=r"output shapes differ: \(1, 2\) vs \(2, 1\)"):
        vb.compare_outputs(expected, expected.T)


def test_describe_exception_follows_the_cause_chain():
    try:
        try:
            raise KeyError("train::trainer")
        except KeyError as inner:
            raise RuntimeError("Failed to evaluate\n  ConfigExpression") from inner
    except RuntimeError as outer:
        text = vb.describe_exception(outer)
    assert text == "RuntimeError: Failed to evaluate ConfigExpression <- KeyError: 'train::trainer'"


def test_unknown_check_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        vb.main(["--checks", "files,bogus"])
    assert exit_info.value.code == 2
    assert "unknown checks ['bogus']" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ repository bundles


REPO_BUNDLES = vb.find_bundles(BUNDLES_ROOT)


def test_repository_bundles_folder_passes_file_checks(capsys):
    """Every folder under bundles/ (file-level checks; the full checks run per bundle below)."""
    code = vb.main(["--bundles-root", str(BUNDLES_ROOT), "--checks", ",".join(vb.STATIC_CHECKS)])
    out = capsys.readouterr().out
    assert code == 0, out
    if not REPO_BUNDLES:
        assert out.strip() == f"no bundles under {BUNDLES_ROOT}: nothing to verify"
    else:
        assert f"{len(REPO_BUNDLES)} bundle(s) verified: {len(REPO_BUNDLES)} passed, 0 failed" in out


@pytest.mark.slow  # one check process per bundle, about 5-15 s each
@pytest.mark.parametrize("bundle", REPO_BUNDLES, ids=[b.name for b in REPO_BUNDLES])
def test_repository_bundle_passes_every_check(bundle, capsys):
    code = vb.main([str(bundle)])
    out = capsys.readouterr().out
    assert code == 0, out
