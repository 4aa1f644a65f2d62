"""RandSampleSliced: one uniformly drawn slice per call, the same for every key, reproducible, checked input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy.stats import chisquare

from medxai.errors import InputError
from medxai.transforms import RandSampleSliced


def _volume(depth: int, height: int = 5, width: int = 4, name: str = "ct_0001.nii.gz") -> MetaTensor:
    """(1, H, W, D) whose slice z holds the value z everywhere; affine with 2.5 mm slices, origin z0 = -40."""
    values = torch.arange(depth, dtype=torch.float32).reshape(1, 1, 1, depth).expand(1, height, width, depth)
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    affine[2, 3] = -40.0
    return MetaTensor(values.clone(), affine=affine, meta={"filename_or_obj": f"/data/site/{name}"})


def _slice_index(out: torch.Tensor) -> int:
    values = torch.unique(out.as_subclass(torch.Tensor))
    assert values.numel() == 1
    return int(values.item())


def test_one_slice_of_the_input_is_kept_with_its_geometry():
    volume = _volume(12)
    out = RandSampleSliced(keys="image").set_random_state(seed=3)({"image": volume})["image"]
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (1, 5, 4, 1)
    z = _slice_index(out)
    assert 0 <= z < 12
    assert torch.equal(out.as_subclass(torch.Tensor), volume.as_subclass(torch.Tensor)[..., z : z + 1])
    # the affine places the slice where it was: origin moved by z slices of 2.5 mm
    assert float(out.affine[2, 3]) == pytest.approx(-40.0 + 2.5 * z)
    assert torch.allclose(out.affine[:3, :3], volume.affine[:3, :3])


def test_slice_index_is_uniform_over_the_volume():
    depth, draws = 10, 5000
    sampler = RandSampleSliced(keys="image").set_random_state(seed=0)
    volume = _volume(depth, height=2, width=2)
    counts = np.bincount([_slice_index(sampler({"image": volume})["image"]) for _ in range(draws)], minlength=depth)
    assert counts.sum() == draws and (counts > 0).all()
    # every slice near draws / depth = 500 (binomial sd 21); a chi-square goodness of fit does not reject uniform
    assert np.abs(counts - draws / depth).max() < 100
    assert chisquare(counts).pvalue > 0.001


def test_every_key_gets_the_same_slice():
    image = _volume(20)
    mask = MetaTensor((image.as_subclass(torch.Tensor) % 3 == 0).float(), affine=image.affine.clone())
    sampler = RandSampleSliced(keys=["image", "lesion_mask"]).set_random_state(seed=7)
    seen = set()
    for _ in range(30):
        out = sampler({"image": image, "lesion_mask": mask, "label": 1})
        z = _slice_index(out["image"])
        seen.add(z)
        assert torch.equal(out["lesion_mask"].as_subclass(torch.Tensor), torch.full((1, 5, 4, 1), float(z % 3 == 0)))
        assert torch.allclose(out["lesion_mask"].affine, out["image"].affine)
        assert out["label"] == 1  # other fields untouched
    assert len(seen) > 10  # the 30 draws really vary


def test_set_random_state_makes_the_draws_reproducible():
    volume = _volume(50)

    def draws(seed: int) -> list[int]:
        sampler = RandSampleSliced(keys="image").set_random_state(seed=seed)
        return [_slice_index(sampler({"image": volume})["image"]) for _ in range(20)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)
    # inside a Compose, Compose.set_random_state reseeds it too
    first = Compose([RandSampleSliced(keys="image")]).set_random_state(seed=5)
    second = Compose([RandSampleSliced(keys="image")]).set_random_state(seed=5)
    assert [_slice_index(first({"image": volume})["image"]) for _ in range(10)] == [
        _slice_index(second({"image": volume})["image"]) for _ in range(10)
    ]


def test_one_slice_volume_is_returned_as_is_and_inverse_restores_the_position():
    single = RandSampleSliced(keys="image")({"image": _volume(1)})["image"]
    assert tuple(single.shape) == (1, 5, 4, 1) and float(single.sum()) == 0.0
    volume = _volume(8)
    sampler = RandSampleSliced(keys="image").set_random_state(seed=1)
    out = sampler({"image": volume})
    z = _slice_index(out["image"])
    back = sampler.inverse(out)["image"]
    assert tuple(back.shape) == (1, 5, 4, 8)
    expected = torch.zeros(1, 5, 4, 8)
    expected[..., z] = float(z)
    assert torch.equal(back.as_subclass(torch.Tensor), expected)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 5, 4), r"case 'ct_0009.nii.gz' \(key 'image'\).*volume \(C, H, W, D\), got shape \(1, 5, 4\)"),
        ((1, 5, 4, 0), r"case 'ct_0009.nii.gz' \(key 'image'\).*empty volume of shape \(1, 5, 4, 0\)"),
        ((1, 0, 4, 6), r"empty volume of shape \(1, 0, 4, 6\)"),
    ],
)
def test_2d_and_empty_inputs_are_refused_naming_the_case(shape, message):
    img = MetaTensor(torch.zeros(shape), meta={"filename_or_obj": "/hospital/jane-doe/ct_0009.nii.gz"})
    with pytest.raises(InputError, match=message) as info:
        RandSampleSliced(keys="image")({"image": img})
    assert "jane-doe" not in str(info.value)


def test_keys_of_different_depth_are_refused():
    with pytest.raises(InputError, match=r"key 'lesion_mask' has 6 slices, key 'image' 8"):
        RandSampleSliced(keys=["image", "lesion_mask"])({"image": _volume(8), "lesion_mask": _volume(6)})


def test_missing_keys():
    with pytest.raises(KeyError):
        RandSampleSliced(keys=["image", "lesion_mask"])({"image": _volume(4)})
    out = RandSampleSliced(keys=["image", "lesion_mask"], allow_missing_keys=True)({"image": _volume(4)})
    assert tuple(out["image"].shape) == (1, 5, 4, 1) and "lesion_mask" not in out
    assert RandSampleSliced(keys="image", allow_missing_keys=True)({"label": 0}) == {"label": 0}
