"""Superpixel LIME/Kernel SHAP of the top slices and the slice-feature embedding, as evaluator handlers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Lambda
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from medxai.data.privacy import pseudonym
from medxai.engines.explain_handlers import (
    FeatureEmbeddingHandler,
    SuperpixelExplanationHandler,
    even_slices,
    evaluation_mode,
    top_scoring_slices,
)
from medxai.engines.inferers import DetailsInferer
from medxai.errors import InputError
from medxai.explain.superpixels import SlicSuperpixels
from medxai.networks import CTMILNet

H = W = 32


def _net(**kwargs) -> CTMILNet:
    torch.manual_seed(0)
    return CTMILNet(backbone="tiny", section_length=3, k=2, use_ncm=False, **kwargs).eval()


def _volume(seed: int, depth: int = 6) -> torch.Tensor:
    """A (1, H, W, D) phantom in [0, 1]: a dark body with bright round blobs, different per slice."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:H, :W]
    volume = np.full((H, W, depth), 0.1)
    for z in range(depth):
        for _ in range(4):
            r, c, radius = rng.uniform(4, H - 4), rng.uniform(4, W - 4), rng.uniform(2.5, 5)
            volume[..., z] += 0.6 * ((rows - r) ** 2 + (cols - c) ** 2 < radius**2)
    volume += 0.02 * rng.standard_normal(volume.shape)
    return torch.as_tensor(np.clip(volume, 0, 1), dtype=torch.float32)[None]


def _case(name: str, seed: int, **fields) -> dict:
    image = MetaTensor(_volume(seed), meta={"filename_or_obj": f"/data/images/{name}.nii.gz"})
    return {"image": image, "label": torch.tensor(seed % 2), **fields}


def _split_details(item: dict) -> dict:
    """What the bundle's postprocessing does with DetailsInferer's dict: details to their own keys."""
    details = item["pred"]
    return {**item, **details, "pred": details["patient_logits"]}


def _plain_batch(batchdata, device, non_blocking, **kwargs):
    """Plain tensors into the network (its output "image" then has no file name: the batch's is used)."""
    return batchdata["image"].as_tensor().to(device), batchdata["label"].to(device)


def _evaluate(net: nn.Module, cases: list[dict], handlers: list) -> SupervisedEvaluator:
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(cases, batch_size=2),
        prepare_batch=_plain_batch,
        network=net,
        inferer=DetailsInferer(),
        postprocessing=Lambda(_split_details),
        val_handlers=handlers,
    )
    evaluator.run()
    return evaluator


def _run_outputs(handler, iterations: list[tuple[list[dict], list[dict]]]) -> Engine:
    """A plain ignite engine whose iterations expose (batch items, output items) as MONAI's do."""

    def step(engine: Engine, pair):
        engine.state.batch = pair[0]
        return pair[1]

    engine = Engine(step)
    handler.attach(engine)
    engine.run(iterations, max_epochs=1)
    return engine


# ------------------------------------------------------------------------------------- helpers


def test_slice_selection_helpers():
    assert top_scoring_slices(torch.tensor([0.5, 2.0, -1.0, 2.0, 1.0]), 3) == [1, 3, 4]  # ties: lower first
    assert top_scoring_slices(np.array([1.0, 3.0]), 5) == [1, 0]
    assert even_slices(6, 4) == [0, 2, 3, 5] and even_slices(6, None) == list(range(6))
    assert even_slices(10, 2) == [0, 9] and even_slices(3, 1) == [0]
    with pytest.raises(InputError, match="at least one slice"):
        even_slices(0, 2)


def test_evaluation_mode_restores_each_module():
    net = _net()
    net.train()
    net.edm.eval()
    with evaluation_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net.trunk.training and not net.edm.training


# ------------------------------------------------------------------------- superpixel handler


def test_superpixel_handler_in_a_monai_evaluator(tmp_path):
    net = _net()
    cases = [_case("ct_0001", 1), _case("ct_0002", 2)]
    handler = SuperpixelExplanationHandler(
        tmp_path, top_k=3, num_samples=96, n_segments=12, network=net, batch_size=48, seed=3
    )
    _evaluate(net, cases, [handler])
    segmenter = SlicSuperpixels(n_segments=12)
    for case in cases:
        name = case["image"].meta["filename_or_obj"].split("/")[-1].removesuffix(".nii.gz")
        volume = case["image"].as_tensor()
        with torch.no_grad():
            scores = net.forward_details(volume[None])["slice_scores"][0, :, 1]
        expected_top = torch.argsort(scores, descending=True)[:3].tolist()
        record = json.loads((tmp_path / name / f"{name}_superpixels.json").read_text())
        assert record["case"] == name and record["top_slices"] == expected_top
        for method in ("lime", "kernel_shap"):
            entries = record["methods"][method]
            assert [e["slice"] for e in entries] == expected_top and [e["rank"] for e in entries] == [0, 1, 2]
            for entry in entries:
                z = entry["slice"]
                assert entry["slice_score"] == pytest.approx(float(scores[z]), abs=1e-5)
                # the explained score is the slice probability the SIM integrates (output="probability")
                assert entry["explained_score"] == pytest.approx(float(torch.sigmoid(scores[z])), abs=1e-5)
                segments = segmenter(volume[..., z][None])[0]
                areas = torch.bincount(segments.flatten()).tolist()
                assert entry["num_superpixels"] == len(entry["weights"]) == len(areas) == int(segments.max()) + 1
                assert entry["areas"] == areas and sum(areas) == H * W
                assert entry["runtime_s"] > 0 and entry["overlay"] == f"{name}_{method}_slice{z}.png"
                top = entry["top_superpixels"]
                assert [t["weight"] for t in top] == sorted((w for w in entry["weights"] if w > 0), reverse=True)[:5]
                if method == "kernel_shap":  # efficiency: the values sum to f(x) - f(all off)
                    difference = entry["explained_score"] - entry["intercept"]
                    assert sum(entry["weights"]) == pytest.approx(difference, abs=1e-6)
                png = Image.open(tmp_path / name / entry["overlay"])
                assert png.size == (W, H) and png.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_0001", "ct_0002"]


class QuadrantTrunk(nn.Module):
    """Feature map 0 is the image inside the top-left quadrant, the other 31 are zero."""

    def __init__(self, num_features: int = 32) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadrant = torch.zeros_like(x[:, :1])
        quadrant[..., : x.shape[2] // 2, : x.shape[3] // 2] = 1.0
        features = torch.zeros(x.shape[0], self.num_features, *x.shape[2:], dtype=x.dtype, device=x.device)
        features[:, 0] = (x * quadrant)[:, 0]
        return features


def _quadrant_net(gain: float = 40.0, bias: float = -3.0) -> CTMILNet:
    """Slice score of class 1: ``gain * mean(x * top-left quadrant) + bias``, the quadrant's brightness."""
    net = _net()
    net.trunk = QuadrantTrunk(net.num_features)
    with torch.no_grad():
        net.edm.conv.weight.zero_()
        net.edm.conv.bias.zero_()
        net.edm.conv.weight[1, 0] = gain
        net.edm.conv.bias[1] = bias
    return net


def test_top_superpixel_lies_in_the_quadrant_the_score_depends_on(tmp_path):
    net, gain = _quadrant_net(), 40.0
    item = _case("ct_0003", 5)
    handler = SuperpixelExplanationHandler(
        tmp_path, top_k=2, num_samples=300, n_segments=16, network=net, baseline="zero", output="logit",
        num_top_superpixels=3,
    )
    _run_outputs(handler, [([], [item])])  # no slice_scores in the output: the handler scores the slices
    record = json.loads((tmp_path / "ct_0003" / "ct_0003_superpixels.json").read_text())
    volume = item["image"].as_tensor()
    brightness = volume[0, : H // 2, : W // 2].mean(dim=(0, 1))  # (D,)
    assert record["top_slices"] == torch.argsort(brightness, descending=True)[:2].tolist()
    inside = np.zeros((H, W), dtype=bool)
    inside[: H // 2, : W // 2] = True
    for method in ("lime", "kernel_shap"):
        for entry in record["methods"][method]:
            z = entry["slice"]
            image = volume[0, :, :, z].numpy()
            segments = SlicSuperpixels(n_segments=16)(volume[..., z][None])[0].numpy()
            # the logit is linear in the superpixel indicators: w_i = gain * sum(x in S_i and Q) / (H W)
            labels = range(segments.max() + 1)
            exact = np.array([gain * image[(segments == i) & inside].sum() for i in labels]) / (H * W)
            np.testing.assert_allclose(entry["weights"], exact, atol=3e-3)
            assert entry["explained_score"] == pytest.approx(gain * float(brightness[z]) / 4 - 3.0, abs=1e-4)
            best = entry["top_superpixels"][0]
            assert best["label"] == int(np.argmax(exact))
            assert inside[segments == best["label"]].mean() > 0.5
            row, col = best["centroid"]
            assert row < H / 2 and col < W / 2
            outside_only = [i for i in range(len(exact)) if not inside[segments == i].any()]
            assert outside_only and max(abs(entry["weights"][i]) for i in outside_only) < 3e-3


def test_superpixel_handler_reads_scores_from_the_output_and_limits_cases(tmp_path):
    net = _net()
    scores = torch.tensor([[0.0, 0.1], [0.0, 2.0], [0.0, -1.0], [0.0, 0.7], [0.0, 1.5], [0.0, -0.2]])
    first = {**_case("ct_0004", 4), "slice_scores": scores}
    second = {**_case("ct_0005", 6), "slice_scores": scores}
    unnamed = {"image": _volume(7), "slice_scores": scores}
    handler = SuperpixelExplanationHandler(
        tmp_path, methods=["lime"], top_k=2, num_samples=40, n_segments=8, network=net, max_cases=2,
        pseudonymize=True,
    )
    _run_outputs(handler, [([], [first]), ([], [unnamed, second])])
    name = pseudonym("ct_0004")
    record = json.loads((tmp_path / name / f"{name}_superpixels.json").read_text())
    assert record["top_slices"] == [1, 4]  # the two highest scores of class 1
    assert [e["slice_score"] for e in record["methods"]["lime"]] == pytest.approx([2.0, 1.5])
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(
        [f"{name}_lime_slice1.png", f"{name}_lime_slice4.png", f"{name}_superpixels.json"]
    )
    # max_cases=2: the unnamed case is the second and is called case-00001; the third case is skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "case-00001"])
    assert "ct_0004" not in " ".join(p.name for p in tmp_path.rglob("*"))


def test_superpixel_handler_is_deterministic(tmp_path):
    net = _net()
    weights = []
    for run in range(2):
        handler = SuperpixelExplanationHandler(
            tmp_path / str(run), top_k=1, num_samples=64, n_segments=10, network=net, seed=11
        )
        record = handler.explain_case(_case("ct_0006", 8), "ct_0006")
        weights.append({m: record["methods"][m][0]["weights"] for m in ("lime", "kernel_shap")})
    assert weights[0] == weights[1]


def test_superpixel_handler_errors(tmp_path):
    net = _net()
    with pytest.raises(InputError, match="needs the evaluator's network"):
        SuperpixelExplanationHandler(tmp_path)
    with pytest.raises(InputError, match="'gradcam' is not a superpixel explainer"):
        SuperpixelExplanationHandler(tmp_path, methods=["gradcam"], network=net)
    with pytest.raises(InputError, match=r"names method\(s\) \['occlusion'\]"):
        SuperpixelExplanationHandler(tmp_path, network=net, explainer_kwargs={"occlusion": {}})
    handler = SuperpixelExplanationHandler(tmp_path, methods="lime", network=net, num_samples=8)
    with pytest.raises(InputError, match=r"case ct_0007: 'image' must be a volume \(1, H, W, D\).*\(1, 32, 32\)"):
        handler.explain_case({"image": torch.rand(1, 32, 32)}, "ct_0007")
    with pytest.raises(InputError, match="'slice_scores' has 3 slices, the volume 6"):
        handler.explain_case({"image": _volume(1), "slice_scores": torch.zeros(3, 2)}, "ct_0008")


# ---------------------------------------------------------------------------- embedding handler


def _feature_cases(num_cases: int = 12, depth: int = 6, width: int = 8) -> tuple[list[dict], list[dict]]:
    """Two well separated clusters of slice features (class 0 around 0, class 1 around 3 in every
    dimension); centres A/B, one case without a centre."""
    rng = np.random.default_rng(0)
    outputs, batch = [], []
    for index in range(num_cases):
        label = index % 2
        features = rng.normal(3.0 * label, 0.5, size=(depth, width))
        outputs.append(
            {
                "image": MetaTensor(torch.zeros(1, 4, 4, depth), meta={"filename_or_obj": f"/d/ct_{index:04d}.nii.gz"}),
                "features": torch.as_tensor(features, dtype=torch.float32),
                "slice_scores": torch.as_tensor(np.stack([np.zeros(depth), np.arange(depth)[::-1]], 1)),
                "label": torch.nn.functional.one_hot(torch.tensor(label), 2).float(),  # AsDiscreted(to_onehot)
            }
        )
        batch.append({} if index == num_cases - 1 else {"centre": "AB"[index // 6]})
    return outputs, batch


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_embedding_handler_writes_one_row_per_kept_slice_and_keeps_clusters_apart(tmp_path):
    outputs, batch = _feature_cases()
    handler = FeatureEmbeddingHandler(tmp_path, method=["tsne", "pca"], max_slices_per_case=4, seed=0,
                                      class_names=["non-COVID", "COVID"])
    _run_outputs(handler, [(batch[:6], outputs[:6]), (batch[6:], outputs[6:])])
    rows = _read_csv(tmp_path / "embedding_tsne.csv")
    assert len(rows) == 12 * 4 and list(rows[0]) == ["case", "slice", "x", "y", "label", "group"]
    assert [int(r["slice"]) for r in rows[:4]] == [0, 2, 3, 5]  # evenly spaced over 6 slices
    assert {r["case"] for r in rows} == {f"ct_{i:04d}" for i in range(12)}
    assert [r["label"] for r in rows[::4]] == [str(i % 2) for i in range(12)]
    assert [r["group"] for r in rows[::4]] == ["A"] * 6 + ["B"] * 5 + ["unknown"]
    labels = np.array([int(r["label"]) for r in rows])
    for method in ("tsne", "pca"):
        coords = np.array([[float(r["x"]), float(r["y"])] for r in _read_csv(tmp_path / f"embedding_{method}.csv")])
        knn = cross_val_score(KNeighborsClassifier(n_neighbors=5), coords, labels, cv=4).mean()
        assert knn > 0.9, (method, knn)
        png = Image.open(tmp_path / f"embedding_{method}.png")
        assert png.size == (600, 600)
    # PCA coordinates are scikit-learn's on the kept features, in row order
    kept = np.concatenate([o["features"].numpy()[[0, 2, 3, 5]] for o in outputs]).astype(np.float64)
    np.testing.assert_allclose(handler.embeddings["pca"], PCA(2, svd_solver="full").fit_transform(kept), atol=1e-9)


def test_embedding_handler_top_selection_and_determinism(tmp_path):
    outputs, batch = _feature_cases(num_cases=4)
    texts = []
    for run in range(2):
        handler = FeatureEmbeddingHandler(tmp_path / str(run), max_slices_per_case=2, slice_selection="top",
                                          seed=5, prefix="val_")
        _run_outputs(handler, [(batch, outputs)])
        texts.append((tmp_path / str(run) / "val_embedding_tsne.csv").read_text())
    rows = _read_csv(tmp_path / "0" / "val_embedding_tsne.csv")
    assert [int(r["slice"]) for r in rows[:2]] == [0, 1]  # class-1 scores decrease with the slice index
    assert texts[0] == texts[1]


def test_embedding_handler_errors_and_too_few_slices(tmp_path):
    with pytest.raises(InputError, match="method must be 'tsne', 'pca'"):
        FeatureEmbeddingHandler(tmp_path, method="umap")
    with pytest.raises(InputError, match="slice_selection"):
        FeatureEmbeddingHandler(tmp_path, slice_selection="random")
    outputs, batch = _feature_cases(num_cases=1)
    missing = [{k: v for k, v in outputs[0].items() if k != "features"}]
    with pytest.raises(InputError, match="case ct_0000: no key 'features'"):
        _run_outputs(FeatureEmbeddingHandler(tmp_path), [(batch, missing)])
    _run_outputs(FeatureEmbeddingHandler(tmp_path, max_slices_per_case=3), [(batch, outputs)])  # 3 points: skipped
    assert not list(tmp_path.glob("embedding_*"))
