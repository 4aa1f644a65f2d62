"""CTMILNet: slices on the last axis, chunking, the EDM/SIM/NCM wiring, baselines, TorchScript, a toy MIL task."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from medxai.errors import InputError
from medxai.explain.cam import EDMActivationMap, upsample_map
from medxai.losses import MILLoss
from medxai.networks import CTMILNet, patient_logit, section_logits


def _net(**kwargs) -> CTMILNet:
    torch.manual_seed(0)
    kwargs.setdefault("backbone", "tiny")
    return CTMILNet(**kwargs).eval()


def test_details_follow_eq3_to_eq6_and_the_nifti_layout():
    net = _net(section_length=4, k=2, integration="noisy_or")
    x = torch.randn(2, 1, 32, 32, 10)
    with torch.no_grad():
        d = net.forward_details(x)
        maps = net.trunk(x[..., 7])  # slice 7 of every volume (slices on the last axis)
    assert d["cams"].shape == (2, 2, 8, 8, 10) and d["transition"].shape == (2, 10, 2, 2, 2)
    torch.testing.assert_close(d["features"][:, 7], maps.mean(dim=(2, 3)))
    torch.testing.assert_close(d["cams"][..., 7], net.edm.conv(maps))
    torch.testing.assert_close(d["slice_scores"], d["cams"].mean(dim=(2, 3)).transpose(1, 2))  # eq. 3
    sections = section_logits(d["slice_scores"], 4, 2)  # 10 slices, l_s = 4 -> 2 sections (4 + 6 slices)
    torch.testing.assert_close(d["section_probs"], torch.sigmoid(sections))
    torch.testing.assert_close(d["patient_logits"], patient_logit(sections, "noisy_or"))
    torch.testing.assert_close(d["patient_probs"], torch.sigmoid(d["patient_logits"]))
    torch.testing.assert_close(d["transition"].sum(dim=-2), torch.ones(2, 10, 2, 2))
    torch.testing.assert_close(net(x), d["patient_logits"])  # forward is the plain tensor by default


def test_resnet18_short_volumes_one_section_k_over_length():
    """6 slices with l_s = 16 and k = 8: one section averaging all slices, so the patient logit is their mean."""
    net = _net(backbone="resnet18", slice_chunk_size=4)
    x = torch.randn(2, 1, 32, 32, 6)
    with torch.no_grad():
        d = net.forward_details(x)
    assert d["section_probs"].shape == (2, 1, 2) and d["features"].shape == (2, 6, 512)
    torch.testing.assert_close(d["patient_logits"], d["slice_scores"].mean(dim=1))


def test_chunked_forward_equals_unchunked_in_eval_mode():
    x = torch.randn(2, 1, 32, 32, 7)
    with torch.no_grad():
        whole = _net(slice_chunk_size=0).forward_details(x)
        for chunk in (1, 3, 32):
            chunked = _net(slice_chunk_size=chunk).forward_details(x)
            assert chunked.keys() == whole.keys()
            for key in whole:
                torch.testing.assert_close(chunked[key], whole[key], msg=f"{key}, chunk {chunk}")


def test_each_slice_is_scored_on_its_own():
    net = _net(section_length=4, k=2)
    x = torch.randn(1, 1, 32, 32, 8)
    with torch.no_grad():
        scores = net.forward_details(x)["slice_scores"]
        alone = net.forward_details(x[..., 5:6])["slice_scores"]
        perm = torch.randperm(8)
        permuted = net.forward_details(x[..., perm])["slice_scores"]
    torch.testing.assert_close(alone[:, 0], scores[:, 5])
    torch.testing.assert_close(permuted, scores[:, perm])


def test_baseline_poolings():
    x = torch.randn(2, 1, 32, 32, 9)
    with torch.no_grad():
        covnet = _net(pooling="max_features", use_ncm=False)
        d = covnet.forward_details(x)
        w, b = covnet.edm.conv.weight.flatten(1), covnet.edm.conv.bias
        torch.testing.assert_close(d["patient_logits"], d["features"].amax(dim=1) @ w.T + b)  # COVNet: max, then FC
        assert "section_probs" not in d and "transition" not in d
        d = _net(pooling="mean_slices", use_ncm=False).forward_details(x)
        torch.testing.assert_close(d["patient_probs"], torch.sigmoid(d["slice_scores"]).mean(dim=1))
        d = _net(pooling="max_slices", use_ncm=False).forward_details(x)
        torch.testing.assert_close(d["patient_probs"], torch.sigmoid(d["slice_scores"]).amax(dim=1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_matches_eager_and_keeps_the_details_switch():
    x = torch.randn(1, 1, 32, 32, 5)
    for kwargs in ({}, {"use_ncm": False, "pooling": "max_features"}):
        net = _net(section_length=2, k=1, **kwargs)
        scripted = torch.jit.script(net)
        torch.testing.assert_close(scripted(x), net(x))
        scripted.return_details = True
        details = scripted(x)
        assert isinstance(details, dict)
        torch.testing.assert_close(details["cams"], net.forward_details(x)["cams"])


def test_edm_map_explainer_reads_the_network_maps():
    net = _net(section_length=4, k=2)
    x = torch.randn(1, 1, 32, 32, 4)
    maps = EDMActivationMap(net, activation_map_fn=net.activation_map)(x, target=1)
    assert maps.shape == (1, 1, 32, 32, 4)
    with torch.no_grad():
        cams = net.activation_map(x)[:, 1:2]  # (1, 1, 8, 8, 4): the class-1 EDM maps of the 4 slices
    torch.testing.assert_close(maps, upsample_map(torch.relu(cams), (32, 32, 4)))


def test_bad_inputs_are_named():
    net = _net()
    with pytest.raises(InputError, match=r"expects volumes \(B, 1, H, W, D\).*\[2, 1, 32, 32\]"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(InputError, match="unknown pooling 'avg'"):
        CTMILNet("tiny", pooling="avg")
    with pytest.raises(InputError, match="unknown integration 'sum'"):
        CTMILNet("tiny", integration="sum")


def _toy_bags(n: int, seed: int, depth: int = 16, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise volumes; positives carry a Gaussian blob (peak 2.5 noise SDs) on 1-2 consecutive slices of 16.

    Returns volumes (n, 1, size, size, depth), bag labels (n,) and the lesion-slice mask (n, depth).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, depth, generator=g)
    y = torch.arange(n) % 2
    lesion = torch.zeros(n, depth, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in torch.nonzero(y).flatten().tolist():
        cy, cx = torch.randint(3, size - 3, (2,), generator=g).tolist()
        first = int(torch.randint(0, depth - 1, (1,), generator=g))
        count = int(torch.randint(1, 3, (1,), generator=g))
        blob = 2.5 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
        x[i, 0, :, :, first : first + count] += blob.unsqueeze(-1)
        lesion[i, first : first + count] = True
    return x, y, lesion


def _auc(net: CTMILNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return roc_auc_score(y.numpy(), net(x)["patient_probs"][:, 1].numpy())


def test_learns_a_toy_mil_task_from_bag_labels_only():
    torch.manual_seed(0)
    x_train, y_train, _ = _toy_bags(64, seed=1)
    x_test, y_test, lesion = _toy_bags(64, seed=2)
    net = CTMILNet("tiny", section_length=8, k=2, dropout=0.2, slice_chunk_size=0, return_details=True)
    loss_fn = MILLoss(lambda_noisy=1e-4)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = _auc(net, x_test, y_test)
    for _ in range(12):
        net.train()
        for idx in torch.randperm(64).split(16):
            loss = loss_fn(net(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = _auc(net, x_test, y_test)
    assert before < 0.7
    assert after > 0.9
    # trained on bag labels only, the top-scoring slice of a positive volume is a lesion slice
    with torch.no_grad():
        top_slice = net(x_test)["slice_scores"][:, :, 1].argmax(dim=1)
    positives = torch.nonzero(y_test).flatten()
    hits = lesion[positives, top_slice[positives]].float().mean()
    assert hits > 0.8  # chance: 1.5 / 16


def test_collated_metatensor_batch_is_accepted():
    from monai.data import MetaTensor, list_data_collate

    net = CTMILNet(backbone="tiny", section_length=2, k=1, use_ncm=False).eval()
    volumes = [MetaTensor(torch.rand(1, 16, 16, 4), meta={"filename_or_obj": f"v{i}.nii.gz"}) for i in range(2)]
    batch = list_data_collate([{"image": v} for v in volumes])["image"]
    with torch.no_grad():
        expected = net(torch.stack([v.as_tensor() for v in volumes]))
        assert torch.allclose(net(batch), expected)
