"""The slice score of the CT MIL classifier as a 2D network, for 2D explainers (LIME, Kernel SHAP, Grad-CAM).

:class:`~medxai.networks.ct_mil.CTMILNet` scores every axial slice on its own (trunk, then the explainable
diagnosis module: ``s_c = mean_ij (A_c)_ij``, seed 003 eq. 3, seed 000 eq. 3) before the slice integration
module pools the scores into section and patient probabilities (eq. 4-6). Seed 000 (sec. 3.3-3.4, Figs.
3-4) explains single CT slices with LIME and Kernel SHAP; what such a 2D explainer should explain is the
score that feeds the SIM. :class:`SliceScorer` is that score as an ordinary classifier of 2D images
``(N, C_in, H, W) -> (N, C)``, sharing the network's weights, so every explainer of :mod:`medxai.explain`
applies to it unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from medxai.errors import InputError
from medxai.networks.ct_mil import CTMILNet
from medxai.networks.edm import EDMHead

__all__ = ["SliceScorer"]


class SliceScorer(nn.Module):
    """EDM slice scores of 2D slices, exactly as :class:`~medxai.networks.ct_mil.CTMILNet` scores each slice.

    ``scorer(slices)[n] == network.forward_details(volume)["slice_scores"][b, d]`` when slice ``n`` is
    ``volume[b, :, :, :, d]`` and the network is in ``eval`` mode. The trunk runs in whatever mode the
    network is in (BatchNorm), while the EDM dropout is always skipped (eval-mode dropout): an explanation
    of a randomly thinned network would change from call to call. Perturbation explainers should run the
    network in ``eval`` mode, otherwise BatchNorm normalises each batch of perturbed slices by its own
    statistics (and updates the running statistics).

    Parameters
    ----------
    network
        The CT MIL network (unwrapped: pass ``ddp_model.module``, or use
        :func:`medxai.engines.inferers.unwrap_network`). Its parameters are shared, not copied.
    class_index
        ``None``: all class scores (N, C). An integer ``c``: only the score of class ``c`` as (N, 1), the
        independent sigmoid logit of that class (CTMILNet's classes are not mutually exclusive). A 2D
        explainer with ``output="probability"`` then explains ``sigmoid(s_c)``, the slice probability, where
        a softmax over all ``C`` scores would mix classes the network never compares.

    Shapes
    ------
    Input: slices (N, C_in, H, W). Output: slice logits (N, C), or (N, 1) with ``class_index``.

    Examples
    --------
    >>> net = CTMILNet(backbone="tiny").eval()
    >>> scorer = SliceScorer(net, class_index=1)
    >>> volume = torch.rand(1, 1, 32, 32, 6)
    >>> torch.allclose(scorer(volume[..., 3]), net.forward_details(volume)["slice_scores"][:, 3, 1:2])
    True
    """

    def __init__(self, network: CTMILNet, class_index: Optional[int] = None) -> None:
        super().__init__()
        trunk = getattr(network, "trunk", None)
        edm = getattr(network, "edm", None)
        if not isinstance(trunk, nn.Module) or not isinstance(edm, EDMHead):
            raise InputError(
                f"SliceScorer needs a CTMILNet-like network with a 'trunk' module and an EDMHead 'edm', got "
                f"{type(network).__name__} (unwrap DistributedDataParallel/DataParallel with .module)."
            )
        num_classes = edm.num_classes
        if class_index is not None and not 0 <= int(class_index) < num_classes:
            raise InputError(f"SliceScorer: class_index must be in [0, {num_classes}), got {class_index}.")
        self.network = network
        self.class_index = None if class_index is None else int(class_index)
        self.in_channels = int(getattr(network, "in_channels", edm.in_features))
        self.num_classes = num_classes if class_index is None else 1

    def activation_maps(self, slices: torch.Tensor) -> torch.Tensor:
        """EDM class activation maps ``A_c`` (N, C, h, w) of slices (N, C_in, H, W), without dropout (eq. 3)."""
        if slices.dim() != 4 or slices.shape[1] != self.in_channels:
            raise InputError(
                f"SliceScorer expects slices (N, {self.in_channels}, H, W), got shape {list(slices.shape)}."
            )
        features = self.network.trunk(slices)
        return self.network.edm.conv(features)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        """Slice logits ``s_c = mean_ij (A_c)_ij`` (N, C), or (N, 1) for ``class_index``."""
        scores = self.activation_maps(slices).mean(dim=(2, 3))
        if self.class_index is not None:
            scores = scores[:, self.class_index : self.class_index + 1]
        return scores
