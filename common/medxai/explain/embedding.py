"""Embeddings of a network's penultimate features: extraction, t-SNE and PCA to 2D, and a scatter plot.

Seed 003 (Fig. 14) maps the backbone features of CT slices with t-SNE and colours them by class while
showing the hospital they came from; seed 004 (Figs. 11-12) maps the penultimate features of Inception V3
(2048-D) and DenseNet-169 (1664-D) with t-SNE, coloured by class and split (train/test). This module does
the three steps with a forward hook (:func:`extract_features`), scikit-learn (:func:`pca_embedding`,
:func:`tsne_embedding`) and matplotlib's Agg canvas (:func:`plot_embedding`, no pyplot global state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from medxai.errors import InputError

__all__ = [
    "resolve_layer",
    "extract_features",
    "pca_embedding",
    "tsne_embedding",
    "embed",
    "plot_embedding",
    "embed_splits",
]

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")


def resolve_layer(model: torch.nn.Module, layer: str | torch.nn.Module) -> torch.nn.Module:
    """The sub-module ``layer`` of ``model``: a module, or a dotted name such as ``"avgpool"`` or
    ``"features.denseblock4"`` (``torch.nn.Module.get_submodule``)."""
    if isinstance(layer, torch.nn.Module):
        if not any(m is layer for m in model.modules()):
            raise InputError(f"layer {type(layer).__name__} is not a sub-module of {type(model).__name__}.")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError as error:
        names = [n for n, _ in model.named_children()]
        raise InputError(f"model {type(model).__name__} has no layer '{layer}'; top-level layers: {names}.") from error


def _batches(data: torch.Tensor | Iterable[Any], batch_size: int, image_key: str) -> Iterable[torch.Tensor]:
    """Input batches from a tensor (N, C, *spatial) or from an iterable (DataLoader) of tensors,
    tuples/lists (first item is the image) or dicts (``image_key``)."""
    if isinstance(data, torch.Tensor):
        if data.ndim < 2 or data.shape[0] == 0:
            raise InputError(f"data must be a non-empty batch (N, C, *spatial), got shape {tuple(data.shape)}.")
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    for index, item in enumerate(data):
        if isinstance(item, Mapping):
            if image_key not in item:
                raise InputError(f"batch {index} has no key '{image_key}'; keys: {sorted(item)}.")
            item = item[image_key]
        elif isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise InputError(f"batch {index} holds a {type(item).__name__}, expected a torch.Tensor.")
        yield item


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    data: torch.Tensor | Iterable[Any],
    layer: str | torch.nn.Module,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    pool: str = "avg",
    image_key: str = "image",
) -> np.ndarray:
    """Outputs of ``layer`` for every sample, as a (N, F) float array.

    Parameters
    ----------
    model
        The network, used in the mode the caller set (call ``model.eval()`` first for BatchNorm/Dropout).
    data
        A tensor (N, C, *spatial), split into chunks of ``batch_size``, or an iterable of batches (a
        ``DataLoader`` yielding tensors, ``(image, label)`` tuples or dicts with ``image_key``).
    layer
        The layer whose output is the feature (module or dotted name), e.g. ``"avgpool"`` of a torchvision
        ResNet (penultimate, 512-D for ResNet-18) or ``"features"`` of a DenseNet.
    device
        Where to run; default: the device of the model's first parameter.
    pool
        For a layer output with spatial dimensions (B, C, *spatial): ``"avg"`` global average pooling to
        (B, C) (the penultimate feature of GAP networks), ``"max"`` global max pooling, or ``"flatten"``.

    Notes
    -----
    The forward hook is registered for this call only and removed afterwards, also on error.
    """
    if pool not in ("avg", "max", "flatten"):
        raise InputError(f"pool must be 'avg', 'max' or 'flatten', got '{pool}'.")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    module = resolve_layer(model, layer)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        out = out.detach().as_subclass(torch.Tensor)
        if out.ndim > 2:
            if pool == "avg":
                out = out.flatten(2).mean(dim=2)
            elif pool == "max":
                out = out.flatten(2).amax(dim=2)
            else:
                out = out.flatten(1)
        captured.append(out.float().cpu())

    chunks: list[torch.Tensor] = []
    handle = module.register_forward_hook(hook)
    try:
        for batch in _batches(data, batch_size, image_key):
            captured.clear()
            model(batch.to(device))
            if len(captured) != 1:
                raise InputError(
                    f"layer '{layer}' ran {len(captured)} times in one forward pass; pick a layer used exactly once."
                )
            chunks.append(captured[0])
    finally:
        handle.remove()
    if not chunks:
        raise InputError("data yielded no batches.")
    return torch.cat(chunks, dim=0).numpy()


def _check_features(features: np.ndarray | torch.Tensor) -> np.ndarray:
    array = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise InputError(f"features must be (N, F) with N >= 2 samples, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise InputError(f"features contain {int((~np.isfinite(array)).sum())} NaN or Inf values.")
    return array


def pca_embedding(features: np.ndarray | torch.Tensor, n_components: int = 2) -> np.ndarray:
    """Project (N, F) features on their first ``n_components`` principal components: (N, n_components).

    Exact SVD (``svd_solver="full"``) with scikit-learn's deterministic sign convention, so the same
    features always give the same coordinates.
    """
    array = _check_features(features)
    if not 1 <= n_components <= min(array.shape):
        raise InputError(
            f"n_components must be in [1, {min(array.shape)}] for features {array.shape}, got {n_components}."
        )
    return PCA(n_components=n_components, svd_solver="full").fit_transform(array)


def tsne_embedding(
    features: np.ndarray | torch.Tensor,
    n_components: int = 2,
    perplexity: float = 30.0,
    seed: int = 0,
    pca_dims: int | None = 50,
    max_iter: int = 1000,
) -> np.ndarray:
    """t-SNE (van der Maaten and Hinton, 2008) of (N, F) features: (N, n_components).

    Parameters
    ----------
    perplexity
        Effective number of neighbours; reduced to ``(N - 1) / 3`` for small N (t-SNE needs
        perplexity < N, and about 3 x perplexity neighbours to calibrate).
    seed
        Random state: the same seed and features give the same coordinates.
    pca_dims
        Features wider than this are first reduced by PCA, as van der Maaten and Hinton do (to 30-50
        dimensions), which removes noise and speeds up the neighbour search; ``None`` skips it.
    """
    array = _check_features(features)
    if array.shape[0] < 4:
        raise InputError(f"t-SNE needs at least 4 samples, got {array.shape[0]}.")
    if pca_dims is not None and array.shape[1] > pca_dims:
        array = pca_embedding(array, min(pca_dims, array.shape[0]))
    perplexity = float(min(perplexity, (array.shape[0] - 1) / 3.0))
    tsne = TSNE(
        n_components=n_components, perplexity=perplexity, init="pca", learning_rate="auto",
        random_state=seed, max_iter=max_iter,
    )
    return tsne.fit_transform(array)


def embed(features: np.ndarray | torch.Tensor, method: str = "tsne", **kwargs: Any) -> np.ndarray:
    """2D coordinates by ``method`` ``"tsne"`` or ``"pca"`` (keyword arguments go to that function)."""
    if method == "tsne":
        return tsne_embedding(features, **kwargs)
    if method == "pca":
        return pca_embedding(features, **kwargs)
    raise InputError(f"unknown embedding method '{method}'; use 'tsne' or 'pca'.")


def plot_embedding(
    coords: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    path: str | Path,
    groups: Sequence[Any] | np.ndarray | None = None,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 6.0),
    dpi: int = 100,
) -> Path:
    """Scatter plot of 2D coordinates coloured by class and marked by a second attribute, saved as PNG.

    Parameters
    ----------
    coords
        (N, 2) embedding.
    labels
        N class labels (ints or strings): the colour (tab10).
    path
        Output PNG file; parent folders are created.
    groups
        Optional N values of a second attribute (split "train"/"test", centre "A"/"B" ...): the marker.
    class_names
        Display names of the labels (mapping label -> name, or a sequence indexed by integer labels).
    figsize, dpi
        The PNG is ``figsize * dpi`` pixels (600 x 600 by default).

    Returns
    -------
    Path
        The written file.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"coords must be (N, 2), got shape {coords.shape}.")
    labels = np.asarray(labels)
    if labels.shape != (coords.shape[0],):
        raise InputError(f"got {labels.size} labels for {coords.shape[0]} points.")
    groups_array = None if groups is None else np.asarray(groups)
    if groups_array is not None and groups_array.shape != (coords.shape[0],):
        raise InputError(f"got {groups_array.size} group values for {coords.shape[0]} points.")

    def name_of(label: Any) -> str:
        if class_names is None:
            return str(label)
        if isinstance(class_names, Mapping):
            return str(class_names.get(label, label))
        return str(class_names[int(label)])

    classes = list(dict.fromkeys(labels.tolist()))
    group_values = [None] if groups_array is None else list(dict.fromkeys(groups_array.tolist()))
    if len(group_values) > len(_MARKERS):
        raise InputError(f"at most {len(_MARKERS)} groups can be told apart by marker, got {len(group_values)}.")
    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = colormaps["tab10"]
    for c, label in enumerate(classes):
        for g, group in enumerate(group_values):
            selected = labels == label
            if groups_array is not None:
                selected &= groups_array == group
            if not selected.any():
                continue
            axes.scatter(
                coords[selected, 0], coords[selected, 1], s=18, color=palette(c % 10), marker=_MARKERS[g],
                alpha=0.8, edgecolors="none",
            )
    handles = [
        Line2D([], [], linestyle="", marker="o", color=palette(c % 10), label=name_of(label))
        for c, label in enumerate(classes)
    ]
    if groups_array is not None:
        handles += [
            Line2D([], [], linestyle="", marker=_MARKERS[g], color="0.3", label=str(group))
            for g, group in enumerate(group_values)
        ]
    axes.legend(handles=handles, loc="best", fontsize="small", frameon=True)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


def embed_splits(
    model: torch.nn.Module,
    loaders: Mapping[str, Iterable[Mapping[str, Any]]],
    output_dir: str | Path,
    layer: str | torch.nn.Module = "pool",
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    method: str = "tsne",
    image_key: str = "image",
    label_key: str = "label",
    seed: int = 0,
    perplexity: float = 30.0,
    device: torch.device | str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Penultimate features of several splits in one 2D map, coloured by class and marked by split.

    Seed 004 Figs. 11-12: t-SNE of the penultimate features (after global average pooling) of the training
    and test images of a fold. Every split's loader yields dict batches with ``image_key`` and ``label_key``;
    all points are embedded together (one t-SNE), so train and test share the map.

    Writes ``<prefix>embedding_<method>.png`` (:func:`plot_embedding`, colour: class, marker: split) and
    ``<prefix>embedding_<method>.csv`` (``split, index, x, y, label``) into ``output_dir`` and returns
    ``{"coords", "labels", "splits", "png", "csv"}``. The model is put in eval mode and restored.
    """
    was_training = model.training
    model.eval()
    features, labels, splits = [], [], []
    try:
        with torch.no_grad():
            for split, loader in loaders.items():
                for batch in loader:
                    if image_key not in batch or label_key not in batch:
                        raise InputError(f"split '{split}': batches need keys '{image_key}' and '{label_key}'.")
                    features.append(extract_features(model, batch[image_key], layer, device=device))
                    label = torch.as_tensor(batch[label_key]).reshape(len(features[-1]), -1)
                    labels += (label.argmax(1) if label.shape[1] > 1 else label[:, 0]).long().tolist()
                    splits += [split] * len(features[-1])
    finally:
        model.train(was_training)
    if not features:
        raise InputError("embed_splits: the loaders yielded no batches.")
    feats = np.concatenate(features, axis=0)
    kwargs: dict[str, Any] = {"seed": seed, "perplexity": perplexity} if method == "tsne" else {}
    coords = embed(feats, method, **kwargs)
    out = Path(output_dir)
    png = plot_embedding(coords, np.asarray(labels), out / f"{prefix}embedding_{method}.png", groups=splits,
                         class_names=class_names, title=f"{method} of penultimate features")
    csv_path = out / f"{prefix}embedding_{method}.csv"
    rows = ["split,index,x,y,label"] + [
        f"{s},{i},{x:.6g},{y:.6g},{lab}" for i, (s, (x, y), lab) in enumerate(zip(splits, coords, labels))
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    return {"coords": coords, "labels": labels, "splits": splits, "png": png, "csv": csv_path}
