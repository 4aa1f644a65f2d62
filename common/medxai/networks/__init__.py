"""Networks: backbone factory, EDM (CAM head), SIM (slice integration), NCM (noise correction), CT MIL classifier,
CXRNet, the sub-pixel (pixel-shuffle, ICNR) decoder and U-Net, an image classifier and the SCPA / PM posterior
ensemble.

Bundle configs reference them as ``medxai.networks.<name>``, e.g.
``{"_target_": "medxai.networks.CTMILNet", "backbone": "resnet50", "section_length": 16}``.
"""

from __future__ import annotations

from medxai.networks.backbones import BackboneSpec, TinyTrunk, create_backbone, list_backbones, register_backbone
from medxai.networks.classifier import ImageClassifier
from medxai.networks.ct_mil import POOLING_MODES, CTMILNet
from medxai.networks.cxrnet import CXRNet
from medxai.networks.edm import EDMHead
from medxai.networks.ensemble import ENSEMBLE_MODES, PosteriorEnsemble, combine_posteriors
from medxai.networks.input_sizes import INPUT_SIZES, PAPER_NAMES, InputSize, canvas_size
from medxai.networks.ncm import NoiseTransitionHead, noisy_posterior
from medxai.networks.sim import (
    INTEGRATION_MODES,
    SliceIntegration,
    patient_logit,
    patient_probability,
    section_logits,
    section_probabilities,
    split_sections,
)
from medxai.networks.wrappers import FirstOutput
from medxai.networks.subpixel import SubpixelDecoder, SubpixelDecoderBlock, SubpixelUNet, split_trunk_stages

__all__ = [
    "BackboneSpec",
    "TinyTrunk",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "ImageClassifier",
    "PosteriorEnsemble",
    "ENSEMBLE_MODES",
    "combine_posteriors",
    "CTMILNet",
    "CXRNet",
    "POOLING_MODES",
    "EDMHead",
    "INPUT_SIZES",
    "PAPER_NAMES",
    "InputSize",
    "canvas_size",
    "NoiseTransitionHead",
    "noisy_posterior",
    "INTEGRATION_MODES",
    "SliceIntegration",
    "split_sections",
    "section_logits",
    "section_probabilities",
    "patient_logit",
    "patient_probability",
    "SubpixelUNet",
    "FirstOutput",
    "SubpixelDecoder",
    "SubpixelDecoderBlock",
    "split_trunk_stages",
]
