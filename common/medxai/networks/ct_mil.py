"""CT volume classifier from patient-level labels: 2D trunk + EDM + SIM + NCM (seed 003 sec. 3.2, seed 000 sec. 3).

Every axial slice of a volume goes through a 2D trunk (:mod:`medxai.networks.backbones`); the explainable
diagnosis module (:class:`~medxai.networks.edm.EDMHead`) turns its feature maps into class activation maps
and slice scores; the slice integration module (:class:`~medxai.networks.sim.SliceIntegration`) turns the
slice scores into section and patient probabilities; the optional noise correction module
(:class:`~medxai.networks.ncm.NoiseTransitionHead`) predicts per-slice label transition matrices for the
noisy slice-level loss (:class:`medxai.losses.MILLoss`).

The same class builds the baselines of seed 003 Table 2 by ``pooling``:

- ``"sim"``: the method (section MIL, eq. 4-6);
- ``"max_features"``: COVNet (Li et al., Radiology 2020): the pooled slice features are max-pooled over
  slices, then classified by the same weights used as a fully connected layer (eq. 1);
- ``"mean_slices"`` / ``"max_slices"``: the slice-level model, every slice classified on its own (train it
  with :class:`medxai.losses.SliceLevelLoss`, the patient label on every slice); the patient probability is
  the mean (or max) of the slice probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxai.errors import InputError
from medxai.networks.backbones import create_backbone
from medxai.networks.edm import EDMHead
from medxai.networks.ncm import NoiseTransitionHead
from medxai.networks.sim import INTEGRATION_MODES, SliceIntegration
from medxai.networks.wrappers import plain_tensor

__all__ = ["POOLING_MODES", "CTMILNet"]

POOLING_MODES = ("sim", "max_features", "mean_slices", "max_slices")


class CTMILNet(nn.Module):
    """Explainable multiple-instance CT classifier (seed 003 Fig. 8) and its baselines.

    Parameters
    ----------
    backbone
        Trunk name for :func:`~medxai.networks.backbones.create_backbone` (seed 003: ResNet-50).
    num_classes
        Classes ``C``; each gets an independent sigmoid probability (eq. 6-7 sum the BCE over c = 0, 1).
    in_channels
        Channels of the input volume (1 for CT).
    section_length, k, integration
        SIM parameters: ``l_s`` (eq. 4; seed 003: 16, seed 000: 8), the top-k of eq. 6 (8) and the patient
        integration (``"odds_product"``: seed 003 eq. 5; ``"noisy_or"``: seed 000 eq. 5).
    dropout
        EDM dropout (seed 003 sec. 3.4: 0.7).
    use_ncm, ncm_hidden
        Add the noise correction module and the width of its embedding ``phi``.
    slice_chunk_size
        Slices per trunk call (``0`` or ``None``: all ``B * D`` at once). Peak activation memory of the
        trunk is bounded by the chunk in inference; in training autograd keeps every chunk's activations,
        so memory grows linearly with ``D``. Chunked and unchunked forward agree in ``eval`` mode; in
        ``train`` mode BatchNorm normalises each chunk by its own statistics, as with any mini-batch.
        Under ``torch.export`` (the ONNX exporter of ``torch.onnx.export``) the trunk runs once on all
        slices: the number of chunks depends on the batch size, which an export with a dynamic batch axis
        leaves symbolic, and a traced loop would be fixed to the export input's chunk count.
    pretrained, pretrained_path
        ImageNet weights (opt-in) or a local state dict for the trunk, see
        :func:`~medxai.networks.backbones.create_backbone`.
    pooling
        ``"sim"`` (the method), ``"max_features"`` (COVNet), ``"mean_slices"`` or ``"max_slices"``
        (slice-level baseline).
    return_details
        When ``True`` :meth:`forward` returns :meth:`forward_details`'s dict (training with
        :class:`~medxai.losses.MILLoss`); otherwise the patient logits only, as MONAI inferers,
        ``verify_net_in_out`` and MONAI Label expect. An attribute, switchable after construction.

    Shapes
    ------
    Input ``x``: (B, C_in, H, W, D), MONAI's NIfTI layout with the ``D`` axial slices on the last axis.
    :meth:`forward` returns the patient logits (B, C), ``logit P(c | P)``. :meth:`forward_details` returns

    - ``patient_logits`` (B, C) and ``patient_probs`` (B, C);
    - ``slice_scores`` (B, D, C): EDM class scores ``s_c`` of every slice (logits; eq. 3);
    - ``section_probs`` (B, S, C): ``P(c | S_i)`` (eq. 6), only for ``pooling="sim"``;
    - ``cams`` (B, C, h, w, D): the EDM activation maps ``A_c`` of every slice (eq. 3), at trunk resolution;
    - ``features`` (B, D, K): globally average-pooled trunk features per slice (for t-SNE);
    - ``transition`` (B, D, C, 2, 2): NCM matrices ``Q^c_ij`` (eq. 9), only with ``use_ncm``.

    All volumes of a batch share ``D`` (resample the depth or use batch size 1 for ragged volumes).
    Scriptable with :func:`torch.jit.script`.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 2,
        in_channels: int = 1,
        section_length: int = 16,
        k: int = 8,
        integration: str = "odds_product",
        dropout: float = 0.7,
        use_ncm: bool = True,
        ncm_hidden: int = 128,
        slice_chunk_size: Optional[int] = 32,
        pretrained: bool = False,
        pretrained_path: Optional[Union[str, Path]] = None,
        pooling: str = "sim",
        return_details: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise InputError(f"CTMILNet: unknown pooling '{pooling}'; choose one of {', '.join(POOLING_MODES)}.")
        if integration not in INTEGRATION_MODES:
            raise InputError(
                f"CTMILNet: unknown integration '{integration}'; choose one of {', '.join(INTEGRATION_MODES)}."
            )
        if slice_chunk_size is not None and slice_chunk_size < 0:
            raise InputError(f"CTMILNet: slice_chunk_size must be >= 0 or None, got {slice_chunk_size}.")
        if num_classes < 1:
            raise InputError(f"CTMILNet: num_classes must be >= 1, got {num_classes}.")
        trunk, num_features = create_backbone(backbone, in_channels, pretrained, pretrained_path)
        self.trunk = trunk
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.edm = EDMHead(num_features, num_classes, dropout)
        self.sim = SliceIntegration(section_length, k, integration)
        self.ncm: Optional[NoiseTransitionHead] = (
            NoiseTransitionHead(num_features, num_classes, ncm_hidden) if use_ncm else None
        )
        self.pooling = pooling
        self.slice_chunk_size = int(slice_chunk_size or 0)
        self.return_details = return_details

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[4] < 1:
            raise InputError(
                f"CTMILNet expects volumes (B, {self.in_channels}, H, W, D) with D >= 1 slices on the last "
                f"axis, got shape {list(x.shape)}."
            )

    def _slices_forward(self, slices: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Trunk + heads on slices (N, C_in, H, W) in chunks; values concatenated over N."""
        chunk = self.slice_chunk_size
        if not torch.jit.is_scripting():
            if torch.compiler.is_exporting():
                chunk = 0  # one trunk call: a chunk loop would be traced for the export input's batch size
        pieces = slices.split(chunk) if 0 < chunk < slices.shape[0] else [slices]
        maps, scores, features, transitions = [], [], [], []
        for piece in pieces:
            feature_maps = self.trunk(piece)
            chunk_maps, chunk_scores = self.edm(feature_maps)
            maps.append(chunk_maps)
            scores.append(chunk_scores)
            features.append(feature_maps.mean(dim=(2, 3)))
            ncm = self.ncm
            if ncm is not None:
                transitions.append(ncm(feature_maps))
        out = {"cams": torch.cat(maps), "slice_scores": torch.cat(scores), "features": torch.cat(features)}
        if len(transitions) > 0:
            out["transition"] = torch.cat(transitions)
        return out

    @torch.jit.export
    def forward_details(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Patient logits and every intermediate (see the class docstring) for volumes (B, C_in, H, W, D)."""
        self._check_input(x)
        # A collated batch of MONAI MetaTensors cannot be reshaped across samples (per-sample metadata):
        # the network only needs the values. (TorchScript has no MetaTensor: the branch is skipped there.)
        if not torch.jit.is_scripting():
            x = plain_tensor(x)
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        per_slice = self._slices_forward(slices)
        cams = per_slice["cams"]
        cams = cams.view(b, d, cams.shape[1], cams.shape[2], cams.shape[3]).permute(0, 2, 3, 4, 1)
        slice_scores = per_slice["slice_scores"].view(b, d, -1)
        features = per_slice["features"].view(b, d, -1)
        out: Dict[str, torch.Tensor] = {"slice_scores": slice_scores, "cams": cams, "features": features}
        if self.pooling == "sim":
            section_logits, patient_logits = self.sim(slice_scores)
            out["section_probs"] = torch.sigmoid(section_logits)
        elif self.pooling == "max_features":
            patient_logits = self.edm.classify_vector(features.max(dim=1).values)
        elif self.pooling == "mean_slices":
            # logit(mean_d sigmoid(s_d)) = log mean sigmoid(s) - log mean sigmoid(-s), in log space
            patient_logits = torch.logsumexp(F.logsigmoid(slice_scores), dim=1) - torch.logsumexp(
                F.logsigmoid(-slice_scores), dim=1
            )
        else:  # max_slices: max_d sigmoid(s_d) = sigmoid(max_d s_d)
            patient_logits = slice_scores.max(dim=1).values
        out["patient_logits"] = patient_logits
        out["patient_probs"] = torch.sigmoid(patient_logits)
        if "transition" in per_slice:
            out["transition"] = per_slice["transition"].view(b, d, self.num_classes, 2, 2)
        return out

    @torch.jit.export
    def activation_map(self, x: torch.Tensor) -> torch.Tensor:
        """EDM class activation maps (B, C, h, w, D) of volumes (B, C_in, H, W, D).

        For :class:`medxai.explain.cam.EDMActivationMap` (``activation_map_fn=net.activation_map``): pass the
        target class explicitly (e.g. the argmax of the patient logits); its ``target=None`` picks the class
        with the largest mean map over all slices, which is not the patient prediction of the SIM.
        """
        return self.forward_details(x)["cams"]

    def forward(
        self, x: torch.Tensor, return_details: Optional[bool] = None
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Patient logits (B, num_classes), or the :meth:`forward_details` dict when ``return_details``.

        ``return_details=None`` uses the ``return_details`` attribute. Passing the keyword per call (as
        :class:`medxai.engines.inferers.DetailsInferer` does) works through ``DistributedDataParallel``,
        which forwards keyword arguments, so one network object can serve a trainer that needs every
        intermediate and an evaluator that needs plain logits.
        """
        details = self.forward_details(x)
        want = self.return_details if return_details is None else return_details
        if want:
            return details
        return details["patient_logits"]
