"""The image-level variant of the CT MIL bundle (seed 003 Table 2, lower half): ``configs/image_level.json``.

Trained on single slices carrying the copied patient label, evaluated on whole volumes (patient level) and
on the per-slice labels of the demo set (image level). Runs ``python -m monai.bundle`` as a user does (a
subprocess from another folder, on a copy of the bundle, a tiny overlay last), plus one in-process check of
the resolved config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from bundle_runner import REPO, BundleCopy, copy_bundle

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"

TINY = {
    "demo_args": {"num_cases": 21, "shape": [48, 48, 16]},
    "backbone": "tiny",
    "image_size": [32, 32],
    "section_length": 4,
    "top_k": 2,
    "batch_size": 4,
    "num_iterations": 8,
    "val_interval": 1,
    "num_workers": 0,
    "cache_rate": 1.0,
}

# Print the input shape of every forward of the network the trainer and the evaluator share, tagged with
# the network's mode (training: the trainer; eval: the validation evaluator on whole volumes).
SHAPE_PROBE = (
    "$@network.register_forward_pre_hook(lambda module, args: print('NETWORK_INPUT', "
    "'train' if module.training else 'eval', list(args[0].shape), flush=True))"
)


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> BundleCopy:
    return copy_bundle(BUNDLE.name, tmp_path_factory.mktemp("ct_mil_image_level"), TINY)


def test_resolved_config_trains_on_single_slices_with_the_patient_label(bundle_copy, monkeypatch):
    from monai.bundle import ConfigParser

    from medxai.transforms import RandSampleSliced

    bundle, env = bundle_copy.bundle, bundle_copy.env
    monkeypatch.setenv("MEDXAI_CACHE", env["MEDXAI_CACHE"])
    parser = ConfigParser()
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "image_level.json", bundle / "tiny.json"]
    parser.read_config([str(c) for c in configs])
    parser["bundle_root"] = str(bundle)
    records = parser.get_parsed_content("train#records")
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset.transform.transforms[len(parser["volume_loading"])], RandSampleSliced)
    for record, index in zip(records, range(len(dataset))):
        item = dataset[index]
        assert tuple(item["image"].shape) == (1, 32, 32, 1)
        assert int(item["label"]) == int(record["label"])  # the patient label, copied onto the slice
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert tuple(batch["image"].shape) == (4, 1, 32, 32, 1)
    # one slice: SIM has one section, top-k capped at 1, so the patient logit is the slice's own EDM score
    network = parser.get_parsed_content("network").eval()
    with torch.no_grad():
        details = network(batch["image"], return_details=True)
    assert details["section_probs"].shape == (4, 1, 2)
    torch.testing.assert_close(details["patient_logits"], details["slice_scores"][:, 0], rtol=0, atol=0)
    assert details["transition"].shape == (4, 1, 2, 2, 2)  # the NCM still models the noisy slice labels
    # the overlay's own paper-sized settings, when nothing overrides them
    overlay = json.loads((bundle / "configs" / "image_level.json").read_text())
    assert (overlay["batch_size"], overlay["num_iterations"], overlay["val_interval"]) == (32, 4000, 4)


def test_training_sees_depth_one_and_evaluation_writes_patient_and_image_level_metrics(bundle_copy):
    bundle, env = bundle_copy.bundle, bundle_copy.env
    (bundle / "configs" / "probe.json").write_text(json.dumps({"run": [SHAPE_PROBE, "$@train#trainer.run()"]}))
    log = bundle_copy.run("train.json", "image_level.json", "probe.json", run_id="training")
    shapes = [(mode, json.loads(shape)) for mode, shape in re.findall(r"NETWORK_INPUT (train|eval) (\[[^\]]*\])", log)]
    datalist = json.loads(next(Path(env["MEDXAI_CACHE"]).glob("demo_ct_*/datalist.json")).read_text())
    n_train, n_val = len(datalist["training"]), len(datalist["validation"])
    train_shapes = [s for mode, s in shapes if mode == "train"]
    eval_shapes = [s for mode, s in shapes if mode == "eval"]
    # 15 training volumes in batches of 4 -> 4 iterations per epoch, ceil(8 / 4) = 2 epochs, one slice each
    assert len(train_shapes) == 2 * -(-n_train // 4)
    assert all(s[1:] == [1, 32, 32, 1] for s in train_shapes)
    assert sorted({s[0] for s in train_shapes}) == sorted({4, n_train % 4 or 4})
    # validation after each epoch on whole volumes (all 16 slices of the lung crop), one per batch
    assert len(eval_shapes) == 2 * n_val and all(s[0] == 1 and s[-1] == 16 for s in eval_shapes)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("ncm.") for k in state)

    bundle_copy.run("train.json", "image_level.json", "evaluate.json")
    test_cases = datalist["test"]
    patient = json.loads((bundle / "eval" / "metrics.json").read_text())
    assert patient["n_cases"] == len(test_cases)
    assert patient["counts"]["tp"] + patient["counts"]["fn"] == sum(c["covid"] for c in test_cases)
    image = json.loads((bundle / "eval" / "slice_metrics.json").read_text())
    slice_labels = [label for c in test_cases for label in c["slice_labels"]]
    assert image["n_cases"] == len(slice_labels) and image["cases"] == len(test_cases)
    assert image["counts"]["tp"] + image["counts"]["fn"] == sum(slice_labels)
    assert image["counts"]["tn"] + image["counts"]["fp"] == len(slice_labels) - sum(slice_labels)
