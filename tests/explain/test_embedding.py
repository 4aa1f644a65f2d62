"""Feature extraction by hook, PCA and t-SNE embeddings, and the scatter plot PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from torch.utils.data import DataLoader, TensorDataset

from medxai.errors import InputError
from medxai.explain.embedding import embed, extract_features, pca_embedding, plot_embedding, tsne_embedding


class _TinyNet(torch.nn.Module):
    """conv (identity weights) -> ReLU -> global pooling -> linear; the pooled features are known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2)[:, :, None, None])
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def test_features_by_layer_name_equal_hand_values_and_hook_is_removed():
    model = _TinyNet().eval()
    x = torch.randn(5, 2, 4, 4)
    expected = x.clamp(min=0).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(extract_features(model, x, "pool", batch_size=2), expected, rtol=1e-6)
    # a layer with spatial output is pooled (avg / max) or flattened
    np.testing.assert_allclose(extract_features(model, x, "act"), expected, rtol=1e-6)
    maxima = x.clamp(min=0).amax(dim=(2, 3))
    np.testing.assert_allclose(extract_features(model, x, "act", pool="max"), maxima, rtol=1e-6)
    assert extract_features(model, x, model.act, pool="flatten").shape == (5, 32)
    # a DataLoader of (image, label) tuples or of dicts gives the same features
    loader = DataLoader(TensorDataset(x, torch.arange(5)), batch_size=3)
    np.testing.assert_allclose(extract_features(model, loader, "pool"), expected, rtol=1e-6)
    dict_batches = [{"image": x[:4]}, {"image": x[4:]}]
    np.testing.assert_allclose(extract_features(model, dict_batches, "pool"), expected, rtol=1e-6)
    assert not model.pool._forward_hooks


def test_hook_removed_on_error_and_bad_layer_named():
    model = _TinyNet()
    with pytest.raises(RuntimeError):
        extract_features(model, torch.randn(2, 3, 4, 4), "pool")  # wrong channel count fails in conv
    assert not model.pool._forward_hooks
    with pytest.raises(InputError, match="no layer 'layer4'"):
        extract_features(model, torch.randn(2, 2, 4, 4), "layer4")


def test_3d_network_penultimate_features_by_dotted_name():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module(
        "features",
        torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1)
        ),
    )
    model.add_module("flatten", torch.nn.Flatten())
    model.add_module("fc", torch.nn.Linear(4, 2))
    model.eval()
    x = torch.randn(3, 1, 8, 8, 8)
    features = extract_features(model, x, "features.3", batch_size=2)
    assert features.shape == (3, 4)
    with torch.no_grad():  # the fc layer applied to the features gives the network's logits
        np.testing.assert_allclose(model.fc(torch.from_numpy(features)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    # the 3D feature maps of "features.2" pooled by their mean are the same features
    np.testing.assert_allclose(extract_features(model, x, "features.2"), features, rtol=1e-5, atol=1e-7)


def test_pca_recovers_known_principal_direction():
    rng = np.random.default_rng(0)
    u = np.array([1.0, 2.0, 2.0, 0.0]) / 3.0  # unit principal direction
    v = np.array([0.0, 0.0, 0.0, 1.0])  # orthogonal, small variance
    a = rng.normal(scale=10.0, size=200)
    a -= a.mean()
    b = rng.normal(scale=0.5, size=200)
    b -= b.mean()
    b -= (b @ a) / (a @ a) * a  # sample-uncorrelated, so the principal axes are exactly u and v
    features = np.outer(a, u) + np.outer(b, v) + 5.0
    coords = pca_embedding(features)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(a), atol=1e-9)
    np.testing.assert_allclose(np.abs(coords[:, 1]), np.abs(b), atol=1e-9)
    np.testing.assert_array_equal(coords, embed(features, "pca"))


def test_tsne_separates_two_clusters_and_is_deterministic():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0.0, 1.0, (40, 64)), rng.normal(6.0, 1.0, (40, 64))])
    labels = np.repeat([0, 1], 40)
    coords = tsne_embedding(features, seed=3, max_iter=500)
    assert coords.shape == (80, 2)
    accuracy = cross_val_score(KNeighborsClassifier(n_neighbors=5), coords, labels, cv=5).mean()
    assert accuracy > 0.95
    np.testing.assert_array_equal(coords, tsne_embedding(features, seed=3, max_iter=500))
    with pytest.raises(InputError, match="at least 4 samples"):
        tsne_embedding(features[:3])


def test_plot_is_a_png_of_the_requested_size(tmp_path):
    rng = np.random.default_rng(2)
    coords = rng.normal(size=(30, 2))
    labels = np.repeat(["COVID-19", "Non-COVID"], 15)
    splits = np.tile(["train", "test", "test"], 10)
    path = plot_embedding(coords, labels, tmp_path / "plots" / "tsne.png", groups=splits, title="t-SNE",
                          figsize=(4.0, 3.0), dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (200, 150)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # tab10 blue and orange points are drawn
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 40).any()
    again = plot_embedding(coords, labels, tmp_path / "again.png", groups=splits, title="t-SNE", figsize=(4.0, 3.0),
                           dpi=50)
    assert again.read_bytes() == path.read_bytes()  # deterministic output
    with pytest.raises(InputError, match="got 29 labels for 30 points"):
        plot_embedding(coords, labels[:29], tmp_path / "x.png")
