from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from monai.data import load_decathlon_datalist

from medxai.cli import datalist, demo_data


def test_demo_data_generates_real_ct_phantoms_and_summarises(tmp_path, capsys):
    demo_data(sets="ct", output_dir=str(tmp_path), num_cases=6, shape=(32, 32, 16))
    out = capsys.readouterr().out
    paths = list(tmp_path.glob("demo_ct_*/datalist.json"))
    assert len(paths) == 1 and str(paths[0]) in out
    content = json.loads(paths[0].read_text())
    n_cases = sum(len(content[s]) for s in ("training", "validation", "test"))
    assert n_cases == 6
    # the printed per-split counts equal the datalist
    for split in ("training", "validation", "test"):
        assert f"{split:<10} {len(content[split]):>4} cases" in out
    records = load_decathlon_datalist(str(paths[0]), data_list_key="training")
    assert all(Path(r["image"]).is_file() and Path(r["lesion_mask"]).is_file() for r in records)
    # a second call reuses the cache instead of regenerating
    mtime = paths[0].stat().st_mtime_ns
    demo_data(sets="ct", output_dir=str(tmp_path), num_cases=6, shape=(32, 32, 16))
    assert paths[0].stat().st_mtime_ns == mtime


def test_datalist_command_on_shared_ucsd_subset(shared_data, tmp_path, capsys):
    output = tmp_path / "ucsd.json"
    datalist("covid_ct_ucsd_manifest", str(shared_data / "covid_ct_ucsd"), output=str(output), split="predefined")
    printed = capsys.readouterr().out
    content = json.loads(output.read_text())
    summary = json.loads(printed.split("\n", 1)[1])
    assert summary["training"]["cases"] == len(content["training"]) == 431
    assert summary["validation"]["cases"] == len(content["validation"]) == 116


def test_console_script_lists_datasets():
    result = subprocess.run(
        [sys.executable, "-c", "from medxai.cli import main; import sys; sys.argv=['medxai','datasets']; main()"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert {"covid_ct_ucsd", "mosmeddata", "ieee8023_cxr", "kermany_cxr", "cc_ccii", "covidx_cxr"} <= set(names)


def test_demo_dry_run_prints_the_monai_bundle_commands(capsys):
    from medxai.cli import DEMO_STEPS, demo

    demo(steps="training,explain", dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["== training", "== explain"]
    training, explain = lines
    assert " -m monai.bundle run training --config_file " in training
    # demo.json is merged last, after the step's own configs, and the bundle root is absolute
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "covid19_ct_mil_classification"
    files = [f"'{bundle / 'configs' / name}'" for name in DEMO_STEPS["explain"][1]]
    assert f'"[{",".join(files)}]"' in explain
    assert explain.index("inference.json") < explain.index("explain.json") < explain.index("demo.json")
    assert f"--bundle_root {bundle}" in explain


def test_demo_rejects_an_unknown_bundle_or_step(tmp_path):
    import pytest

    from medxai.cli import bundle_command, demo
    from medxai.errors import InputError

    with pytest.raises(InputError, match="no bundle with a configs/demo.json at"):
        demo(bundle="no_such_bundle", bundles_dir=str(tmp_path), dry_run=True)
    with pytest.raises(InputError, match="unknown demo step 'train'"):
        bundle_command(tmp_path, "train")


def test_demo_headline_prints_the_figures_a_bundle_reports():
    from medxai.cli import headline

    classification = {"n_cases": 20, "auc": 0.995, "sensitivity": 0.9, "specificity": 1, "auc_ci": None}
    assert headline(classification) == "held-out 20 cases: auc 0.995, sensitivity 0.900, specificity 1.000"
    segmentation = {"split": "test", "n_cases": 51, "mean_dice": 0.92512, "mean_iou": 0.8641}
    assert headline(segmentation) == "held-out 51 cases: mean_dice 0.925, mean_iou 0.864"
    four_class = {"n_cases": 48, "class_names": ["a", "b", "c", "d"], "accuracy": 0.7917, "auc": 0.986,
                  "macro": {"f1": 0.7911}}
    assert headline(four_class) == "held-out 48 cases: accuracy 0.792, auc 0.986, macro_f1 0.791"


def test_report_command_writes_a_self_contained_page_per_case(tmp_path, monkeypatch, capsys):
    import base64

    from PIL import Image

    out, evaluation = tmp_path / "explain", tmp_path / "eval"
    for case, probability in (("ct_0001", 0.25), ("ct_0002", 0.875)):
        (out / case).mkdir(parents=True)
        summary = {"case": case, "probabilities": {"non-COVID-19": 1 - probability, "COVID-19": probability},
                   "predicted_class": "COVID-19" if probability >= 0.5 else "non-COVID-19",
                   "sentence": f"COVID-19 (probability {probability:.2f}).", "boxes": []}  # fmt: skip
        (out / case / f"{case}_summary.json").write_text(json.dumps(summary))
        Image.new("RGB", (12, 7), (255, 0, 0)).save(out / case / f"{case}_overlay.png")
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({"n_cases": 2, "auc": 0.75}))
    from medxai.cli import main

    # the console script's argument parsing (fire), in this process
    argv = ["medxai", "report", "--output_dir", str(out), "--eval_dir", str(evaluation), "--title", "CT <demo>"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert f"wrote {out / 'report' / 'index.html'} and 2 case pages" in capsys.readouterr().out
    index = (out / "report" / "index.html").read_text()
    assert "<title>CT &lt;demo&gt;</title>" in index and 'href="ct_0002.html"' in index
    assert '<tr data-key="auc"><th>auc</th><td class="num" data-value="0.75">0.75</td></tr>' in index
    page = (out / "report" / "ct_0002.html").read_text()
    png = base64.b64encode((out / "ct_0002" / "ct_0002_overlay.png").read_bytes()).decode()
    assert f'src="data:image/png;base64,{png}" width="12" height="7"' in page
    assert 'data-value="0.875">0.875</td>' in page and "COVID-19 (probability 0.88)." in page
    assert "No boxes" in page and "http" not in page
