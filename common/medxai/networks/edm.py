"""Explainable diagnosis module (EDM): a classifier whose class activation maps are part of the forward pass.

Seed 003 sec. 3.2.1, eq. 1-3 (seed 000 sec. 3.1, eq. 1-3). CAM (Zhou et al., CVPR 2016) scores class ``c`` as
``s_c = sum_k W_kc GAP(F^k)`` (eq. 1) and explains it afterwards by ``A_c = sum_k W_kc F^k`` (eq. 2). The
EDM swaps the fully connected layer for a 1x1 convolution with the same weights, applied *before* pooling,
so ``A_c`` is computed by the network and ``s_c = mean_ij (A_c)_ij`` (eq. 3). Both are linear, so eq. 1 and
eq. 3 give the same score; the maps are learnt end to end and available during training at no extra cost.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxai.errors import InputError

__all__ = ["EDMHead"]


class EDMHead(nn.Module):
    """Dropout, then a 1x1 convolution producing class activation maps; slice scores are their spatial mean.

    Parameters
    ----------
    in_features
        Channels ``K`` of the trunk's feature maps.
    num_classes
        Number of classes ``C``.
    dropout
        Drop probability (seed 003 sec. 3.4: 0.7). Channel-wise (:class:`torch.nn.Dropout2d`): dropping
        feature map ``k`` is dropping entry ``k`` of the pooled vector, so even in training the head equals
        "GAP, dropout, linear" with the same mask.
    bias
        Whether the 1x1 convolution has a bias; it adds ``b_c`` to every pixel of ``A_c`` and so to ``s_c``.

    Shapes
    ------
    ``forward(features (N, K, h, w)) -> (maps (N, C, h, w), scores (N, C))``: the maps ``A_c`` of eq. 3
    and the class scores (logits) ``s_c = mean_ij (A_c)_ij``.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.7, bias: bool = True) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise InputError(f"EDMHead: in_features and num_classes must be >= 1, got {in_features}, {num_classes}.")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"EDMHead: dropout must be in [0, 1), got {dropout}.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(in_features, num_classes, kernel_size=1, bias=bias)

    def activation_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``A_c = sum_k W_kc F^k (+ b_c)`` (eq. 3 inner sum), (N, K, h, w) -> (N, C, h, w)."""
        return self.conv(self.dropout(features))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.activation_maps(features)
        return maps, maps.mean(dim=(2, 3))

    def classify_vector(self, pooled: torch.Tensor) -> torch.Tensor:
        """The same weights used as the fully connected layer of eq. 1 on pooled features (N, K) -> (N, C).

        Element-wise dropout on the vector (the counterpart of the channel-wise dropout on maps). Used by
        the COVNet baseline, which pools features over slices before classifying.
        """
        pooled = F.dropout(pooled, p=self.dropout.p, training=self.training)
        return F.linear(pooled, self.conv.weight.flatten(1), self.conv.bias)
