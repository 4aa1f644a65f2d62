"""CheckLabelMapd: segmentation labels must be class indices in range, checked before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medxai.data.datalist import select_records
from medxai.errors import DatasetError, InputError
from medxai.networks import FirstOutput
from medxai.transforms import CheckLabelMapd


def _label(values: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.as_tensor(values)[None], meta={"filename_or_obj": "/site/jane_doe/seg_0001.nii.gz"})


def test_valid_labels_pass_unchanged() -> None:
    label = _label(np.array([[[0, 1], [2, 3]]], dtype=np.float32))
    out = CheckLabelMapd("label", num_classes=4)({"label": label})
    assert out["label"] is label


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([[[0, 4], [43, 1]]]), r"labels \[4, 43\] are outside the class range \[0, 4\)"),
        (np.array([[[0.0, 0.5], [1.0, 1.0]]]), "fractional"),
        (np.array([[[0.0, np.nan], [1.0, 1.0]]]), "NaN"),
        (np.zeros((0, 2, 2)), "empty"),
    ],
)
def test_bad_labels_name_the_case_and_values(values, message) -> None:
    with pytest.raises(InputError, match=message) as info:
        CheckLabelMapd("label", num_classes=4)({"label": _label(values)})
    assert "seg_0001" in str(info.value) and "jane_doe" not in str(info.value)


def test_select_records_by_thickness_drops_thin_labels() -> None:
    records = [{"image": "a_thick.nii", "label": "a_l.nii", "thickness": "thick"},
               {"image": "a_thin.nii", "label": "b_l.nii", "thickness": "thin"}]  # fmt: skip
    assert select_records(records, "thickness", "thin", ["image"]) == [{"image": "a_thin.nii"}]
    assert select_records(records, "thickness", ["thick", "thin"]) == records
    with pytest.raises(DatasetError, match=r"no record has thickness in \['medium'\]; the values found are \['thick', 'thin'\]"):
        select_records(records, "thickness", "medium")
    with pytest.raises(DatasetError, match="has no 'thickness'"):
        select_records([{"image": "x.nii"}], "thickness", "thin")


def test_first_output_unwraps_list_outputs() -> None:
    from monai.networks.nets import BasicUNetPlusPlus

    net = BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 8, 4))
    wrapped = FirstOutput(net).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x)[0])
    identity = FirstOutput(torch.nn.Identity())
    assert torch.equal(identity(x), x)
    with pytest.raises(InputError, match="wraps a torch.nn.Module"):
        FirstOutput(lambda v: v)  # type: ignore[arg-type]
