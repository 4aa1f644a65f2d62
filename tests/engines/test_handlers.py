"""Ignite handlers run in real engines: TensorBoard event files read back, report files compared with
:func:`classification_report` on the same predictions."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import LrScheduleHandler
from monai.transforms import Activationsd
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medxai.data.privacy import pseudonym
from medxai.engines import (
    ClassificationReportHandler,
    ExplanationImageHandler,
    LearningRateLogger,
    case_name_of,
    explainer_maps,
)
from medxai.errors import InputError
from medxai.explain.writers import render_overlay
from medxai.metrics.classification import SCALAR_METRICS, classification_report


def read_events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0, SCALARS: 0})
    events.Reload()
    return events


def decoded(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def coloured(rgb: np.ndarray) -> set[tuple[int, int]]:
    """Pixels that are not gray (the map shows there)."""
    rows, cols = np.nonzero((rgb.max(axis=2).astype(int) - rgb.min(axis=2)) > 0)
    return set(zip(rows.tolist(), cols.tolist()))


def test_explanation_images_2d_every_epoch(tmp_path):
    images = torch.linspace(0, 1, 2 * 8 * 8).reshape(2, 1, 8, 8)
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, 0, 1:3, 5:7] = 2.0  # sample 0: hot block at rows 1-2, columns 5-6
    maps[1, 0, 6, 1] = 0.5  # sample 1: one hot pixel
    engine = Engine(lambda engine, batch: {"image": images, "cam": maps, "pred": torch.zeros(2, 2)})
    writer = SummaryWriter(log_dir=str(tmp_path))
    ExplanationImageHandler(summary_writer=writer, max_images=4, tag="edm").attach(engine)
    engine.run([0, 1], max_epochs=2)  # two iterations per epoch: written once per epoch
    writer.close()

    events = read_events(tmp_path)
    assert sorted(events.Tags()[IMAGES]) == ["edm/0", "edm/1"]
    for index, hot in ((0, {(1, 5), (1, 6), (2, 5), (2, 6)}), (1, {(6, 1)})):
        logged = events.Images(f"edm/{index}")
        assert [event.step for event in logged] == [1, 2]
        rgb = decoded(logged[-1])
        assert rgb.shape == (8, 8, 3)
        assert np.array_equal(rgb, render_overlay(images[index, 0], maps[index, 0]))
        assert coloured(rgb) == hot  # the map shows exactly where it is high; the rest is the gray image
        row, col = next(iter(hot))
        assert rgb[row, col, 0] > rgb[row, col, 2]  # jet's top end is red


def test_explanation_images_3d_pick_the_slice_with_most_map_mass(tmp_path):
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 8, 8, 6)
    heat = torch.zeros(1, 1, 8, 8, 6)
    heat[0, 0, 2:4, 2:4, 4] = 1.0  # mass 4 on slice 4
    heat[0, 0, 5, 5, 1] = 3.0  # mass 3 on slice 1 (higher peak, less mass)
    # a MONAI evaluator's decollated output: one dict per sample, channel-first without the batch dimension
    output = [{"image": MetaTensor(volume[0]), "cam": heat[0], "pred": torch.tensor([0.2, 0.8])}]
    engine = Engine(lambda engine, batch: output)
    writer = SummaryWriter(log_dir=str(tmp_path))
    ExplanationImageHandler(summary_writer=writer, global_step_transform=lambda epoch: 10 * epoch).attach(engine)
    engine.run([0], max_epochs=1)
    writer.close()

    logged = read_events(tmp_path).Images("explanation/0")
    assert [event.step for event in logged] == [10]
    rgb = decoded(logged[0])
    assert np.array_equal(rgb, render_overlay(volume[0, 0, ..., 4], heat[0, 0, ..., 4]))
    assert coloured(rgb) == {(2, 2), (2, 3), (3, 2), (3, 3)}


def test_low_resolution_maps_are_resized_to_the_image_and_explainer_maps(tmp_path):
    class QuadrantExplainer:
        """A 2x2 map that is high in the top-left quadrant, whatever the input."""

        def __call__(self, images, target):
            assert target == [1]
            return torch.tensor([[4.0, 0.0], [0.0, 0.0]]).expand(images.shape[0], 1, 2, 2)

    image = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8).repeat(1, 3, 1, 1)  # 3 equal channels
    engine = Engine(lambda engine, batch: [{"image": image[0], "label": torch.tensor([0.0, 1.0])}])
    engine.run([0], max_epochs=1)
    images, maps = explainer_maps(QuadrantExplainer(), target_key="label")(engine)
    handler = ExplanationImageHandler(map_fn=lambda e: (images, maps), log_dir=str(tmp_path))
    (rgb,) = handler.overlays(images, maps)
    assert rgb.shape == (8, 8, 3)
    hot = coloured(rgb)
    # bilinear upsampling by 4 (half-pixel centres): the map is 4 at rows/cols 0..1 and falls to 0 at 6
    assert {(r, c) for r in range(2) for c in range(2)} <= hot <= {(r, c) for r in range(6) for c in range(6)}
    # pixel (0, 0): image value 0 (black), map at its maximum: half of jet's top colour (0.5, 0, 0)
    assert rgb[0, 0].tolist() == [64, 0, 0]
    with pytest.raises(InputError, match=r"maps \(B, 1, H, W"):
        handler.overlays(images, torch.zeros(1, 2, 8, 8))


def test_learning_rate_logger_follows_the_scheduler(tmp_path):
    weight = torch.nn.Parameter(torch.zeros(1))
    bias = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [bias], "lr": 1.0}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = Engine(lambda engine, batch: optimizer.step())
    writer = SummaryWriter(log_dir=str(tmp_path))
    LearningRateLogger(optimizer, summary_writer=writer).attach(trainer)
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    trainer.run([0, 1], max_epochs=3)
    writer.close()

    events = read_events(tmp_path)
    assert sorted(events.Tags()[SCALARS]) == ["learning_rate/group_0", "learning_rate/group_1"]
    first = events.Scalars("learning_rate/group_0")
    assert [e.step for e in first] == [1, 2, 3]
    assert [e.value for e in first] == pytest.approx([0.1, 0.05, 0.025])
    assert [e.value for e in events.Scalars("learning_rate/group_1")] == pytest.approx([1.0, 0.5, 0.25])


def _network(n_in: int, n_classes: int, softmax: bool) -> torch.nn.Module:
    """Logits of class k: 4 k (mean intensity - 0.5): brighter images lean to higher classes."""
    linear = torch.nn.Linear(n_in, n_classes)
    with torch.no_grad():
        classes = torch.arange(n_classes, dtype=torch.float32)
        linear.weight.copy_((4.0 * classes / n_in)[:, None].expand(n_classes, n_in))
        linear.bias.copy_(-2.0 * classes)
    layers = [torch.nn.Flatten(), linear]
    return torch.nn.Sequential(*layers, torch.nn.Softmax(dim=1)) if softmax else torch.nn.Sequential(*layers)


def test_classification_report_handler_in_a_supervised_evaluator(tmp_path):
    generator = torch.Generator().manual_seed(0)
    brightness = torch.tensor([0.2, 0.7, 0.4, 0.3, 0.8, 0.6, 0.9, 0.55, 0.45, 0.35])
    images = brightness[:, None, None, None] + 0.01 * torch.randn(10, 1, 4, 4, generator=generator)
    labels = [0, 1, 1, 0, 1, 0, 1, 1, 0, 1]
    data = [
        {"image": MetaTensor(images[i], meta={"filename_or_obj": f"/data/site-a/case_{i:02d}.nii.gz"}),
         "label": labels[i]}
        for i in range(10)
    ]
    network = _network(16, 2, softmax=False)
    handler = ClassificationReportHandler(
        tmp_path / "eval", class_names=["normal", "covid"], positive_class="covid", prefix="val_", n_bootstrap=50
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=4),
        network=network,
        postprocessing=Activationsd(keys="pred", softmax=True),
        val_handlers=[handler],
    )
    evaluator.run()

    with torch.no_grad():
        probabilities = torch.softmax(network(images), dim=1).numpy()
    expected = classification_report(
        labels, probabilities, class_names=["normal", "covid"], positive_class="covid", n_bootstrap=50
    )
    # covid called where the brightness is above 0.5: cases 1, 4, 6, 7 right, case 5 wrong; 2 and 9 missed
    assert expected["counts"] == {
        "per_class": {"normal": 4, "covid": 6}, "predicted_per_class": {"normal": 5, "covid": 5},
        "tp": 4, "fp": 1, "tn": 3, "fn": 2,
    }
    written = json.loads((tmp_path / "eval" / "val_metrics.json").read_text())
    assert written["epoch"] == 1 and written["n_cases"] == 10
    assert written["confusion_matrix"] == expected["confusion_matrix"]
    assert written["counts"] == expected["counts"]
    for metric in SCALAR_METRICS:
        assert written[metric] == pytest.approx(expected[metric], abs=1e-6)
        assert evaluator.state.metrics[f"val_{metric}"] == pytest.approx(expected[metric], abs=1e-6)
    assert written["auc_ci"] == expected["auc_ci"]
    assert written["curves"]["covid"]["roc"]["auc"] == pytest.approx(expected["auc"])

    with open(tmp_path / "eval" / "val_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == [f"case_{i:02d}" for i in range(10)]
    assert [int(row["label"]) for row in rows] == labels
    assert [float(row["score_covid"]) for row in rows] == pytest.approx(probabilities[:, 1].tolist(), abs=1e-5)
    predicted = (probabilities[:, 1] >= 0.5).astype(int).tolist()
    assert [int(row["predicted"]) for row in rows] == predicted
    assert [row["predicted_name"] for row in rows] == [["normal", "covid"][p] for p in predicted]
    for name in ("val_roc.png", "val_pr.png", "val_confusion.png"):
        with Image.open(tmp_path / "eval" / name) as image:
            assert image.format == "PNG" and image.size == (500, 500)

    evaluator.run()  # a second validation starts from scratch (EPOCH_STARTED resets)
    assert json.loads((tmp_path / "eval" / "val_metrics.json").read_text())["n_cases"] == 10


def test_classification_report_handler_batch_dicts_multiclass_and_pseudonyms(tmp_path):
    generator = torch.Generator().manual_seed(2)
    brightness = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.45, 0.6, 0.55, 0.2, 0.8])
    images = brightness[:, None, None, None] + 0.01 * torch.randn(9, 1, 3, 3, generator=generator)
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2]
    one_hot = torch.nn.functional.one_hot(torch.tensor(labels), 3).float()
    data = [
        {"image": images[i], "label": one_hot[i], "image_meta_dict": {"filename_or_obj": f"scan{i}.png"}}
        for i in range(9)
    ]
    network = _network(9, 3, softmax=True)
    handler = ClassificationReportHandler(tmp_path, class_names=["normal", "covid", "cap"], pseudonymize=True,
                                          save_plots=False)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=5),
        network=network,
        decollate=False,  # state.output and state.batch stay batch-first dicts
        val_handlers=[handler],
    )
    evaluator.run()

    with torch.no_grad():
        probabilities = network(images).numpy()
    expected = classification_report(labels, probabilities, class_names=["normal", "covid", "cap"])
    assert handler.report["confusion_matrix"] == expected["confusion_matrix"]
    assert handler.report["macro"]["f1"] == pytest.approx(expected["macro"]["f1"], abs=1e-6)
    assert handler.report["per_class"]["cap"]["auc"] == pytest.approx(expected["per_class"]["cap"]["auc"], abs=1e-6)
    assert evaluator.state.metrics["accuracy"] == pytest.approx(expected["accuracy"])
    # the middle class is never the argmax: its precision is undefined, NaN in the engine's metrics
    assert expected["precision"] is None and math.isnan(evaluator.state.metrics["precision"])
    assert any(note.startswith("precision of class 'covid'") for note in handler.report["notes"])
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == [pseudonym(f"scan{i}") for i in range(9)]
    assert [int(row["predicted"]) for row in rows] == probabilities.argmax(axis=1).tolist()
    assert list(rows[0]) == ["case", "label", "label_name", "predicted", "predicted_name",
                             "score_normal", "score_covid", "score_cap"]
    assert not (tmp_path / "roc.png").exists()


def test_case_names_and_missing_keys():
    from medxai.data.privacy import pseudonym

    # a DICOM series folder is named by the pseudonym of its whole path (folders are often patient names), as
    # the case writers name it, so every output of a case lands in one folder; a NIfTI file by its stem
    series = {"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/a/b/Doe_Jane/"})}
    assert case_name_of(series) == pseudonym("/a/b/Doe_Jane") and "Doe" not in case_name_of(series)
    assert case_name_of({"image_meta_dict": {"filename_or_obj": "/a/ct_0003.nii.gz"}}) == "ct_0003"
    assert case_name_of({"image_meta_dict": {"filename_or_obj": "/a/ct_0003.nii.gz"}}, pseudonymize=True) == pseudonym(
        "ct_0003"
    )
    assert case_name_of({"image": torch.zeros(1)}) is None
    engine = Engine(lambda engine, batch: [{"prediction": torch.tensor([0.3])}])
    ClassificationReportHandler("unused").attach(engine)
    with pytest.raises(InputError, match="has no key 'pred'"):
        engine.run([0], max_epochs=1)


def test_class_indices_from_engine_feeds_ignite_accuracy_with_int_and_one_hot_labels():
    from ignite.metrics import Accuracy

    from medxai.engines import class_indices_from_engine

    output = [
        {"pred": torch.tensor([0.7, 0.1, 0.2]), "label": torch.tensor(0)},
        {"pred": torch.tensor([0.2, 0.5, 0.3]), "label": torch.tensor([2])},
        {"pred": torch.tensor([0.1, 0.1, 0.8]), "label": torch.tensor([0.0, 0.0, 1.0])},  # one-hot
    ]
    scores, labels = class_indices_from_engine()(output)
    assert scores.shape == (3, 3) and labels.tolist() == [0, 2, 2]
    metric = Accuracy()
    metric.update((scores, labels))
    assert metric.compute() == pytest.approx(2 / 3)  # the second case predicts class 1, not 2
