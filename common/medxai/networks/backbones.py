"""A registry of 2D convolutional trunks and a ``create_backbone(name, ...)`` factory (timm style).

A *trunk* is a classification CNN with its pooling and classifier removed: it maps slices
(N, C_in, H, W) to feature maps (N, K, h, w). The explainable diagnosis module (:mod:`medxai.networks.edm`)
puts its 1x1 convolution on these maps, so the class activation maps come out of the network itself.

Sources, one registry:

- torchvision (``resnet18/34/50/101``, ``resnext50_32x4d``, ``resnext101_32x8d``, ``densenet121/161/169/201``,
  ``vgg16/19``, ``squeezenet1_0/1_1``, ``shufflenet_v2_x1_0``, ``inception_v3``): the 12 CNNs of seed 004
  (Table 1; torchvision has only ShuffleNet v2, seed 004 used v1), the ResNet-50 of seed 003, and the
  VGG-16/19, ResNet-18/34 and DenseNet-161/201 of DeepCOVIDExplainer (seed 002, sec. II-B);
- timm: ``xception`` (timm's ``legacy_xception``, the Keras/Chollet model of seed 004), and any timm model
  by the prefix ``timm:`` (e.g. ``timm:efficientnet_b0``), built with ``num_classes=0, global_pool=""``;
- MONAI: ``monai_resnet18/34/50`` (:class:`monai.networks.nets.ResNet`) and ``monai_densenet121``;
- ``tiny``: a two-block conv trunk for tests and CPU demos (not a published architecture).

Weights are opt-in and nothing is downloaded by default: ``pretrained=False`` (default) is random
initialisation, logged at INFO level. ``pretrained_path`` loads a local state dict of the *full*
classification model (``torch.load(..., weights_only=True)``; a ``"state_dict"`` / ``"model"`` wrapper and a
``"module."`` prefix are unwrapped): every trunk key must be present (strict), classifier keys are ignored,
and any other key is an error. ``pretrained=True`` uses torchvision's weights enum (``DEFAULT`` weights) or
timm's pretrained tag, which read their local caches (``$TORCH_HOME``, the Hugging Face cache) and download
only when the file is not cached.

``in_channels != 3`` replaces the first convolution. With pretrained weights its filters are adapted by
:func:`timm.models.adapt_input_conv`: one channel gets the sum of the RGB filters (so a grey image ``g``
replicated to RGB and the adapted filter on ``g`` give the same response), other counts repeat the RGB
filters scaled by ``3 / in_channels``. ImageNet normalisation is the data pipeline's job (torchvision's
Inception v3 ``transform_input`` is not part of the trunk).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision.models as tvm

from medxai.errors import InputError
from medxai.serialization import load_weights, weights_load_reason

__all__ = [
    "BackboneSpec",
    "TinyTrunk",
    "register_backbone",
    "list_backbones",
    "create_backbone",
    "load_trunk_weights",
    "cached_weights_file",
]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
#: Registry names served by timm models (seed 004's Xception is timm's ``legacy_xception``, Chollet 2017).
TIMM_ALIASES = {"xception": "legacy_xception"}

#: Builder: ``in_channels -> (trunk with its first convolution taking in_channels, K)``.
TrunkBuilder = Callable[[int], "tuple[nn.Module, int]"]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered trunk and map a full model's state dict onto it.

    Attributes
    ----------
    name
        Registry name.
    build
        ``in_channels -> (trunk, K)``; the trunk's first convolution already takes ``in_channels``.
    first_conv
        State-dict prefix of the first convolution (e.g. ``"conv1"``); its ``.weight`` is channel-adapted.
    head_prefixes
        State-dict prefixes of the classifier, ignored when loading weights (e.g. ``("fc.",)``).
    pretrained_state_dict
        Callable returning the full model's ImageNet state dict for ``pretrained=True``, or ``None``.
    fix_keys
        Optional renaming of legacy state-dict keys (e.g. torchvision's old DenseNet ``norm.1`` names).
    """

    name: str
    build: TrunkBuilder
    first_conv: str
    head_prefixes: tuple[str, ...]
    pretrained_state_dict: Callable[[], Mapping[str, torch.Tensor]] | None = None
    fix_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    first_conv: str,
    head_prefixes: tuple[str, ...],
    pretrained_state_dict: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    fix_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Decorator registering a trunk builder ``in_channels -> (trunk, K)`` under ``name`` (lower case).

    ``first_conv`` and ``head_prefixes`` name the first convolution and the classifier in the *full*
    model's state dict (see :class:`BackboneSpec`); the trunk must keep the full model's key names.
    """

    def decorator(build: TrunkBuilder) -> TrunkBuilder:
        key = name.lower()
        if key in _REGISTRY or key in TIMM_ALIASES:
            raise ValueError(f"backbone name '{key}' is already registered.")
        _REGISTRY[key] = BackboneSpec(key, build, first_conv, tuple(head_prefixes), pretrained_state_dict, fix_keys)
        return build

    return decorator


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (any timm model is also available as ``"timm:<name>"``)."""
    return sorted([*_REGISTRY, *TIMM_ALIASES])


# --------------------------------------------------------------------------------------------- helpers


def _replace_conv_in_channels(model: nn.Module, path: str, in_channels: int) -> None:
    """Swap the Conv2d at dotted ``path`` for a freshly initialised one taking ``in_channels`` inputs."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{path} is a {type(old).__name__}, not a Conv2d.")
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    setattr(parent, attr, new)


def _named_sequential(
    model: nn.Module, names: list[str], extra: tuple[tuple[str, nn.Module], ...] = ()
) -> nn.Sequential:
    """``nn.Sequential`` of ``model``'s children ``names`` (state-dict keys stay those of ``model``)."""
    modules: OrderedDict[str, nn.Module] = OrderedDict((n, getattr(model, n)) for n in names)
    modules.update(extra)
    return nn.Sequential(modules)


def _torchvision_state_dict(arch: str) -> Callable[[], Mapping[str, torch.Tensor]]:
    """ImageNet state dict of torchvision's ``arch`` with its ``DEFAULT`` weights, from the torch hub cache or
    downloaded (hash-checked) when absent; legacy keys are fixed by the spec's ``fix_keys``.

    The file is read with ``weights_only=True``: torchvision's own builders (``tvm.get_model(arch, weights=...)``)
    read it through ``torch.hub.load_state_dict_from_url``, whose default ``weights_only=False`` unpickles
    whatever sits in the cache (tested in ``tests/security/test_untrusted_checkpoints.py``)."""

    def load() -> Mapping[str, torch.Tensor]:
        weights = tvm.get_model_weights(arch).DEFAULT
        logger.info("backbone %s: torchvision weights %s (torch hub cache, downloaded if absent).", arch, weights)
        try:
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        except pickle.UnpicklingError as error:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url.split("?")[0]).name
            raise InputError(f"backbone weights file {cached} cannot be read: {weights_load_reason(error)}") from error

    return load


_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _fix_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's legacy DenseNet keys (``denselayer1.norm.1.weight`` -> ``denselayer1.norm1.weight``),
    as ``torchvision.models.densenet._load_state_dict`` does for its own checkpoint files."""
    fixed = {}
    for key, value in state.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


# ------------------------------------------------------------------------------------- torchvision

_RESNET_TRUNK = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def _register_torchvision_resnet(arch: str) -> None:
    @register_backbone(arch, "conv1", ("fc.",), _torchvision_state_dict(arch))
    def build(in_channels: int) -> tuple[nn.Module, int]:
        model = tvm.get_model(arch, weights=None)
        _replace_conv_in_channels(model, "conv1", in_channels)
        return _named_sequential(model, _RESNET_TRUNK), model.fc.in_features


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d"):
    _register_torchvision_resnet(_arch)


def _register_torchvision_densenet(arch: str) -> None:
    @register_backbone(arch, "features.conv0", ("classifier.",), _torchvision_state_dict(arch), _fix_densenet_keys)
    def build(in_channels: int) -> tuple[nn.Module, int]:
        model = tvm.get_model(arch, weights=None)
        _replace_conv_in_channels(model, "features.conv0", in_channels)
        # torchvision's DenseNet.forward applies ReLU after `features` (which ends with norm5)
        return _named_sequential(model, ["features"], (("relu", nn.ReLU()),)), model.classifier.in_features


for _arch in ("densenet121", "densenet161", "densenet169", "densenet201"):
    _register_torchvision_densenet(_arch)


def _register_torchvision_features(arch: str, num_features: int) -> None:
    """VGG and SqueezeNet: the trunk is ``model.features`` (VGG's avgpool + MLP, SqueezeNet's conv head dropped)."""

    @register_backbone(arch, "features.0", ("classifier.",), _torchvision_state_dict(arch))
    def build(in_channels: int) -> tuple[nn.Module, int]:
        model = tvm.get_model(arch, weights=None)
        _replace_conv_in_channels(model, "features.0", in_channels)
        return _named_sequential(model, ["features"]), num_features


for _arch, _k in (("vgg16", 512), ("vgg19", 512), ("squeezenet1_0", 512), ("squeezenet1_1", 512)):
    _register_torchvision_features(_arch, _k)


@register_backbone("shufflenet_v2_x1_0", "conv1.0", ("fc.",), _torchvision_state_dict("shufflenet_v2_x1_0"))
def _shufflenet_v2_x1_0(in_channels: int) -> tuple[nn.Module, int]:
    model = tvm.shufflenet_v2_x1_0(weights=None)
    _replace_conv_in_channels(model, "conv1.0", in_channels)
    return _named_sequential(model, ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]), model.fc.in_features


_INCEPTION_V3_TRUNK = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
]  # fmt: skip


@register_backbone(
    "inception_v3", "Conv2d_1a_3x3.conv", ("fc.", "AuxLogits."), _torchvision_state_dict("inception_v3")
)
def _inception_v3(in_channels: int) -> tuple[nn.Module, int]:
    """Inception v3 up to ``Mixed_7c`` (the auxiliary classifier is dropped); inputs of at least 75x75."""
    model = tvm.inception_v3(weights=None, aux_logits=True, init_weights=True)
    _replace_conv_in_channels(model, "Conv2d_1a_3x3.conv", in_channels)
    return _named_sequential(model, _INCEPTION_V3_TRUNK), model.fc.in_features


# -------------------------------------------------------------------------------------------- MONAI


def _register_monai_resnet(arch: str) -> None:
    @register_backbone(f"monai_{arch}", "conv1", ("fc.",))
    def build(in_channels: int) -> tuple[nn.Module, int]:
        from monai.networks import nets

        model = getattr(nets, arch)(spatial_dims=2, n_input_channels=in_channels, num_classes=1)
        return _named_sequential(model, ["conv1", "bn1", "act", "maxpool", *_RESNET_TRUNK[4:]]), model.fc.in_features


for _arch in ("resnet18", "resnet34", "resnet50"):
    _register_monai_resnet(_arch)


@register_backbone("monai_densenet121", "features.conv0", ("class_layers.",), fix_keys=_fix_densenet_keys)
def _monai_densenet121(in_channels: int) -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet121

    model = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
    # MONAI's DenseNet applies class_layers.relu after `features` (which ends with norm5)
    return _named_sequential(model, ["features"], (("relu", nn.ReLU()),)), model.class_layers.out.in_features


# --------------------------------------------------------------------------------------------- timm

def _timm_trunk(timm_name: str, in_channels: int, pretrained: bool = False) -> tuple[nn.Module, int]:
    """A timm model without pooling and classifier (``num_classes=0, global_pool=""``), and its width."""
    import timm

    model = timm.create_model(timm_name, pretrained=pretrained, in_chans=in_channels, num_classes=0, global_pool="")
    return model, int(model.num_features)


def _timm_spec(timm_name: str, registry_name: str) -> BackboneSpec:
    """Spec of a timm model; first-conv and classifier names come from timm's pretrained config."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(timm_name):
        raise InputError(f"backbone '{registry_name}': timm has no model '{timm_name}'.")
    cfg = get_pretrained_cfg(timm_name)
    first_conv = (cfg.first_conv if cfg is not None else None) or ""
    classifier = (cfg.classifier if cfg is not None else None) or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return BackboneSpec(
        registry_name,
        lambda in_channels: _timm_trunk(timm_name, in_channels),
        first_conv,
        tuple(f"{c}." for c in classifier),
    )


# --------------------------------------------------------------------------------------------- tiny


class TinyTrunk(nn.Module):
    """Two conv-BN-ReLU-maxpool blocks, for tests and CPU demos only (not a published architecture).

    Maps (N, C_in, H, W) to (N, features[-1], H / 4, W / 4). Used by the unit tests and the demo
    overlays, where a ResNet would make a CPU run take minutes.

    Parameters
    ----------
    in_channels
        Input channels.
    features
        Output channels of the two blocks.
    """

    def __init__(self, in_channels: int = 1, features: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        c1, c2 = features
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.pool = nn.MaxPool2d(2)
        self.num_features = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.pool(torch.relu(self.bn2(self.conv2(x))))


@register_backbone("tiny", "conv1", ())
def _tiny(in_channels: int) -> tuple[nn.Module, int]:
    trunk = TinyTrunk(in_channels)
    return trunk, trunk.num_features


class SmallResNetTrunk(nn.Module):
    """A small ResNet (3x3 stem and three stride-2 stages of torchvision ``BasicBlock``), for CPU demos.

    Maps (N, C_in, H, W) to (N, widths[-1], H / 8, W / 8). Not a published architecture: the demo overlays
    use it where ResNet-50 would make a CPU run take hours; its stages are ResNet's own blocks, so CAM,
    Grad-CAM and LRP treat it like a ResNet.

    Parameters
    ----------
    in_channels
        Input channels.
    widths
        Channels of the stem and of the three stages.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int, int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        stem, *stages = (int(w) for w in widths)
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, previous = [], stem
        for width in stages:
            downsample = nn.Sequential(
                nn.Conv2d(previous, width, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(width)
            )
            blocks.append(BasicBlock(previous, width, stride=2, downsample=downsample))
            previous = width
        self.layer1, self.layer2, self.layer3 = blocks
        self.num_features = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


@register_backbone("small_resnet", "conv1", ())
def _small_resnet(in_channels: int) -> tuple[nn.Module, int]:
    trunk = SmallResNetTrunk(in_channels)
    return trunk, trunk.num_features


# ------------------------------------------------------------------------------------------ factory


def _get_spec(name: str) -> BackboneSpec:
    key = name.lower()
    if key.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX) :], name)
    if key in TIMM_ALIASES:
        return _timm_spec(TIMM_ALIASES[key], key)
    if key not in _REGISTRY:
        raise InputError(
            f"unknown backbone '{name}'; available: {', '.join(list_backbones())}, or any timm model as "
            f"'{TIMM_PREFIX}<name>'."
        )
    return _REGISTRY[key]


def _timm_name(spec: BackboneSpec) -> str | None:
    """The timm model behind ``spec``, or ``None`` for torchvision / MONAI / tiny trunks."""
    if spec.name.lower().startswith(TIMM_PREFIX):
        return spec.name[len(TIMM_PREFIX) :]
    return TIMM_ALIASES.get(spec.name)


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: the object itself or its ``state_dict`` / ``model`` entry."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{source} does not hold a state dict (a mapping of parameter names to tensors).")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_trunk_weights(
    trunk: nn.Module, state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec, source: str
) -> None:
    """Load a full model's ``state_dict`` into ``trunk``: strict on trunk keys, classifier keys ignored.

    The first convolution's weight is channel-adapted (:func:`timm.models.adapt_input_conv`) when the
    trunk takes a different number of input channels than the saved model.

    Raises
    ------
    InputError
        When a trunk key is missing, a key is neither trunk nor classifier, or a shape does not match.
    """
    state = dict(state_dict)
    if spec.fix_keys is not None:
        state = spec.fix_keys(state)
    if spec.head_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(spec.head_prefixes)}
    trunk_state = trunk.state_dict()
    conv_key = f"{spec.first_conv}.weight"
    if conv_key in state and conv_key in trunk_state and state[conv_key].ndim == 4:
        target_channels = trunk_state[conv_key].shape[1]
        saved = state[conv_key]
        if saved.shape[1] != target_channels:
            from timm.models import adapt_input_conv

            state[conv_key] = adapt_input_conv(target_channels, saved, base_chans=saved.shape[1])
    try:
        # strict=False only to report both lists at once; BatchNorm fills in absent `num_batches_tracked`
        # counters of checkpoints older than PyTorch 0.4.1, as a strict load would
        result = trunk.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise InputError(f"weights {source} do not fit backbone '{spec.name}': {err}") from err
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    if missing or unexpected:
        raise InputError(
            f"weights {source} do not fit backbone '{spec.name}': missing trunk keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} (classifier keys {list(spec.head_prefixes)} are ignored)."
        )


def _torchvision_arch(spec: BackboneSpec) -> str | None:
    """The torchvision architecture behind a registered spec (``None`` for MONAI, tiny and timm trunks)."""
    if spec.pretrained_state_dict is None or _timm_name(spec) is not None:
        return None
    return spec.name


def cached_weights_file(name: str) -> Path | None:
    """The local file that ``pretrained=True`` would read for backbone ``name``, if it is already cached.

    torchvision weights (and timm weights published by URL, such as ``legacy_xception``) live in
    ``<torch.hub.get_dir()>/checkpoints/<file name of the URL>`` (``$TORCH_HOME/hub/checkpoints``); timm weights
    published on the Hugging Face hub are looked up in the Hugging Face cache without any network access.
    Returns ``None`` when nothing is cached or the backbone has no published weights. Never downloads.
    """
    spec = _get_spec(name)
    timm_name = _timm_name(spec)
    url: str | None = None
    if timm_name is not None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(timm_name)
        if cfg is None:
            return None
        if cfg.file:
            return Path(cfg.file) if Path(cfg.file).is_file() else None
        if cfg.hf_hub_id:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:  # pragma: no cover - timm depends on huggingface_hub
                return None
            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(cfg.hf_hub_id, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
        url = cfg.url
    elif _torchvision_arch(spec) is not None:
        url = tvm.get_model_weights(spec.name).DEFAULT.url
    if not url:
        return None
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
    return candidate if candidate.is_file() else None


def _auto_pretrained(spec: BackboneSpec, name: str, in_channels: int) -> tuple[nn.Module, int]:
    """``pretrained="auto"``: ImageNet weights from the local cache if present, else random initialisation
    with a WARNING naming the file that was looked for. Never downloads (the cache is checked first)."""
    timm_name = _timm_name(spec)
    has_weights = timm_name is not None or spec.pretrained_state_dict is not None
    if not has_weights:
        logger.warning(
            "backbone %s: pretrained='auto' but this trunk has no published ImageNet weights; "
            "random initialisation.", spec.name,
        )
        return spec.build(in_channels)
    path = cached_weights_file(name)
    if path is None:
        where = Path(torch.hub.get_dir()) / "checkpoints"
        logger.warning(
            "backbone %s: pretrained='auto' found no ImageNet weights in the local cache (%s or the Hugging Face "
            "cache); RANDOM INITIALISATION, not transfer learning. Nothing is downloaded: put the weights file "
            "there, set TORCH_HOME, or pass pretrained_path.", spec.name, where,
        )
        return spec.build(in_channels)
    if timm_name is not None:
        import timm

        logger.info("backbone %s: ImageNet weights from the local cache %s.", spec.name, path)
        model = timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
            in_chans=in_channels, num_classes=0, global_pool="",
        )
        return model, int(model.num_features)
    trunk, num_features = spec.build(in_channels)
    state = _unwrap_state_dict(load_weights(path, what="backbone weights file"), str(path))
    load_trunk_weights(trunk, state, spec, str(path))
    logger.info("backbone %s: ImageNet weights loaded from the local cache %s (in_channels=%d).", spec.name, path,
                in_channels)
    return trunk, num_features


def create_backbone(
    name: str,
    in_channels: int = 1,
    pretrained: bool | str = False,
    pretrained_path: str | Path | None = None,
) -> tuple[nn.Module, int]:
    """Build a registered trunk mapping (N, in_channels, H, W) to feature maps (N, K, h, w).

    Parameters
    ----------
    name
        A name from :func:`list_backbones` (case-insensitive) or ``"timm:<timm model name>"``.
    in_channels
        Input channels of the first convolution (1 for CT slices).
    pretrained
        ``True``: the ImageNet weights of torchvision's ``DEFAULT`` enum (or timm's default tag) from the local
        cache; they are downloaded when not cached. MONAI and ``tiny`` trunks have none.
        ``"auto"``: the same weights only if already in the local cache (:func:`cached_weights_file`),
        otherwise random initialisation with a WARNING; never downloads (seed 004's transfer learning where
        weights are available, a working model where they are not).
    pretrained_path
        A local state dict of the full classification model (``torch.load(..., weights_only=True)``);
        takes precedence over ``pretrained``.

    Returns
    -------
    (trunk, K)
        The trunk module and its number of output feature maps ``K``.

    Raises
    ------
    InputError
        Unknown name, ``in_channels < 1``, a missing weights file, weights that do not fit, or
        ``pretrained=True`` for a trunk without published weights.
    """
    if int(in_channels) < 1:
        raise InputError(f"backbone '{name}': in_channels must be >= 1, got {in_channels}.")
    in_channels = int(in_channels)
    spec = _get_spec(name)
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise InputError(f"backbone '{name}': pretrained_path {path} is not a file.")
        trunk, num_features = spec.build(in_channels)
        state = _unwrap_state_dict(load_weights(path, what="backbone weights file"), str(path))
        load_trunk_weights(trunk, state, spec, str(path))
        logger.info("backbone %s: weights loaded from %s (in_channels=%d).", spec.name, path, in_channels)
        return trunk, num_features
    if isinstance(pretrained, str):
        if pretrained.lower() != "auto":
            raise InputError(f"backbone '{name}': pretrained must be True, False or 'auto', got {pretrained!r}.")
        return _auto_pretrained(spec, name, in_channels)
    if pretrained:
        timm_name = _timm_name(spec)
        if timm_name is not None:
            logger.info("backbone %s: timm pretrained weights (from the local cache or the hub).", spec.name)
            return _timm_trunk(timm_name, in_channels, pretrained=True)
        if spec.pretrained_state_dict is None:
            raise InputError(
                f"backbone '{name}' has no published ImageNet weights; use pretrained_path or pretrained=False."
            )
        trunk, num_features = spec.build(in_channels)
        load_trunk_weights(trunk, spec.pretrained_state_dict(), spec, "ImageNet (torchvision DEFAULT)")
        return trunk, num_features
    logger.info("backbone %s: random initialisation, no pretrained weights (in_channels=%d).", spec.name, in_channels)
    return spec.build(in_channels)
