"""ExplanationMapd: the predicted (or given) class is explained, in eval mode, and the map keeps the input's
metadata so ``Invertd`` can bring it back to the original grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Resized

from medxai.errors import InputError
from medxai.explain import create_explainer
from medxai.networks import ImageClassifier
from medxai.transforms.explanation_map import ExplanationMapd


def _network() -> ImageClassifier:
    torch.manual_seed(0)
    network = ImageClassifier("tiny", num_classes=3)
    for module in network.modules():  # running statistics that differ from any single image's
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return network


def test_explains_the_predicted_class_in_eval_mode_and_restores_the_mode():
    network = _network().train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    explainer = create_explainer("gradcam", network, target_layer="trunk")
    image = MetaTensor(torch.rand(1, 32, 32))
    out = ExplanationMapd(keys="image", explainer=explainer)({"image": image, "pred": torch.tensor([0.1, 0.7, 0.2])})
    with torch.no_grad():
        network.eval()
        expected = explainer(image[None].as_tensor(), [1])[0]
    torch.testing.assert_close(out["map"].as_tensor(), expected)
    network.train()
    assert network.training  # restored
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # running stats untouched
    # a given target class wins over the prediction
    target = ExplanationMapd(keys="image", explainer=explainer, target_key="label")(
        {"image": image, "pred": torch.tensor([0.1, 0.7, 0.2]), "label": 2}
    )
    network.eval()
    torch.testing.assert_close(target["map"].as_tensor(), explainer(image[None].as_tensor(), [2])[0])


def test_map_inverts_to_the_original_grid_with_the_input():
    network = _network().eval()
    resize = Compose([Resized(keys="image", spatial_size=(32, 32))])
    data = resize({"image": MetaTensor(torch.rand(1, 48, 40))})
    data["pred"] = torch.tensor([0.2, 0.3, 0.5])
    data = ExplanationMapd(keys="image", explainer=create_explainer("gradcampp", network, target_layer="trunk"))(data)
    inverted = Invertd(keys="map", transform=resize, orig_keys="image", nearest_interp=False)(data)
    assert tuple(inverted["map"].shape) == (1, 48, 40)


def test_missing_prediction_and_several_keys_are_clear_errors():
    explainer = create_explainer("gradcam", _network().eval(), target_layer="trunk")
    with pytest.raises(InputError, match="key 'pred' is missing"):
        ExplanationMapd(keys="image", explainer=explainer)({"image": torch.rand(1, 32, 32)})
    with pytest.raises(InputError, match="one input key"):
        ExplanationMapd(keys=["image", "other"], explainer=explainer)
