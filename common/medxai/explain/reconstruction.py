"""The CXRNet representation image as an explanation (seed 001, sec. III-B and Fig. 12c).

CXRNet is an encoder-decoder-encoder network: the first encoder classifies the image, the decoder rebuilds
an image of the input's size from the encoder's features, and the second (weight-shared) encoder
classifies that rebuilt image, trained with a fusion loss so that the reconstruction keeps "the most
influential areas and features for classification". The reconstruction, the *representation image*, is
the method's explanation: a pixel-level map produced by the forward pass itself, with no gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from medxai.errors import InputError
from medxai.explain.base import Explainer, resolve_targets
from medxai.explain.hooks import select_output
from medxai.explain.registry import register_explainer

__all__ = ["RepresentationImage"]


@register_explainer("representation")
@register_explainer("cxrnet_representation")
class RepresentationImage(Explainer):
    """CXRNet's representation image: the decoder's reconstruction, averaged over its channels.

    Parameters
    ----------
    model
        A network whose forward returns both the logits and the reconstruction (B, C_r, *spatial) of the
        input's spatial size, as a tuple or a dict; or one with a ``forward_details`` method returning that
        dict (:class:`medxai.networks.CXRNet`, whose plain forward gives the logits only), which is used
        then (on the module inside a ``DistributedDataParallel`` wrapper).
    image_key
        Index (tuple output) or key (dict output) of the reconstruction.
    logits_key
        Index or key of the logits (B, K); used to check targets and to pick the predicted class.

    Notes
    -----
    The map is the same for every class (the decoder is not class-conditional); ``target`` is still
    validated against the logits so that a call with a wrong class fails as with other explainers. The map
    is signed if the decoder's output is; one forward pass, no backward.
    """

    def __init__(
        self, model: torch.nn.Module, image_key: str | int = 1, logits_key: str | int | None = 0
    ) -> None:
        super().__init__(model)
        self.image_key = image_key
        self.logits_key = logits_key

    def attribute(self, x: torch.Tensor, target: Any, **kwargs: Any) -> torch.Tensor:
        # imported here: medxai.engines imports medxai.metrics, which imports medxai.explain (a cycle when
        # medxai.metrics is the first package imported)
        from medxai.engines.inferers import unwrap_network

        details = getattr(unwrap_network(self.model), "forward_details", None)
        with torch.no_grad():
            output = details(x) if callable(details) else self.model(x)
        image = select_output(output, self.image_key)
        if self.logits_key is not None:
            resolve_targets(target, x.shape[0], select_output(output, self.logits_key))
        if image.ndim != x.ndim or image.shape[0] != x.shape[0] or image.shape[2:] != x.shape[2:]:
            raise InputError(
                f"the representation image (output {self.image_key!r}) has shape {tuple(image.shape)}; expected "
                f"(B={x.shape[0]}, C, {', '.join(map(str, x.shape[2:]))}) like the input {tuple(x.shape)}."
            )
        return image.mean(dim=1, keepdim=True).to(device=x.device, dtype=x.dtype)
