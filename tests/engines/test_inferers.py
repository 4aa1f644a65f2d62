"""DetailsInferer: one forward pass returns every intermediate, plain, through DDP and in a MONAI evaluator."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer

from medxai.engines.inferers import DetailsInferer, accepts_return_details, unwrap_network
from medxai.errors import InputError
from medxai.networks.ct_mil import CTMILNet
from medxai.transforms.outputs import SplitDetailsd


def _net(**kwargs) -> CTMILNet:
    torch.manual_seed(0)
    return CTMILNet("tiny", section_length=4, k=2, dropout=0.0, use_ncm=False, slice_chunk_size=0, **kwargs).eval()


def _volume(batch: int = 2, depth: int = 8) -> torch.Tensor:
    return torch.randn(batch, 1, 16, 16, depth, generator=torch.Generator().manual_seed(1))


class _DetailsOnly(nn.Module):
    """A network without a ``return_details`` argument: forward gives logits, forward_details a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([2.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x)["patient_logits"]

    def forward_details(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3, 4))[:, None]
        return {"patient_logits": mean * self.weight, "mean": mean}


def test_details_equal_forward_details_and_plain_forward_is_untouched():
    net, x = _net(), _volume()
    details = DetailsInferer()(x, net)
    reference = net.forward_details(x)
    assert set(details) == set(reference) == {"slice_scores", "cams", "features", "section_probs",
                                             "patient_logits", "patient_probs"}
    for key, value in reference.items():
        torch.testing.assert_close(details[key], value, rtol=0, atol=0)
    # the attribute stays False: the network still gives plain logits to SimpleInferer / verify_net_in_out
    assert net.return_details is False
    torch.testing.assert_close(SimpleInferer()(x, net), reference["patient_logits"], rtol=0, atol=0)
    assert details["cams"].shape == (2, 2, 4, 4, 8)  # tiny trunk: 1/4 resolution, slices last
    assert details["section_probs"].shape == (2, 2, 2)  # 8 slices / l_s = 4


def test_falls_back_to_forward_details_and_refuses_networks_without_details():
    net = _DetailsOnly()
    assert not accepts_return_details(net) and accepts_return_details(_net())
    x = torch.full((3, 1, 2, 2, 2), 0.5)
    x[1] = -1.0
    out = DetailsInferer()(x, net)
    torch.testing.assert_close(out["patient_logits"], torch.tensor([[1.0, -0.5], [-2.0, 1.0], [1.0, -0.5]]))
    torch.testing.assert_close(out["mean"], torch.tensor([[0.5], [-1.0], [0.5]]))
    with pytest.raises(InputError, match="Linear.*neither a 'return_details' argument"):
        DetailsInferer()(torch.zeros(1, 2), nn.Linear(2, 2))


def test_through_data_parallel_and_unwrapping():
    net = _net()
    wrapped = nn.DataParallel(net)  # on CPU it calls the module directly, keyword arguments included
    assert unwrap_network(wrapped) is net and accepts_return_details(wrapped)
    x = _volume(1)
    torch.testing.assert_close(DetailsInferer()(x, wrapped)["patient_logits"], net(x), rtol=0, atol=0)


@pytest.fixture
def single_process_group(tmp_path):
    """A one-process gloo group on CPU, so DistributedDataParallel can be built in a unit test."""
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_forwards_the_keyword_and_synchronises_gradients(single_process_group):
    net = _net().train()
    reference = _net().train()
    ddp = nn.parallel.DistributedDataParallel(net)
    x, target = _volume(), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = DetailsInferer()(x, ddp)
    assert isinstance(out, dict) and out["cams"].shape == (2, 2, 4, 4, 8)
    nn.functional.binary_cross_entropy_with_logits(out["patient_logits"], target).backward()
    expected = reference.forward_details(x)
    nn.functional.binary_cross_entropy_with_logits(expected["patient_logits"], target).backward()
    # world size 1: DDP's all-reduce averages over one rank, so its gradients equal the plain module's
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)

    # a DDP-wrapped network with forward_details only would skip the all-reduce in training: refused
    plain = nn.parallel.DistributedDataParallel(_DetailsOnly())
    with pytest.raises(InputError, match="_DetailsOnly.*gradient synchronisation"):
        DetailsInferer()(torch.ones(1, 1, 2, 2, 2), plain)
    plain.eval()
    with torch.no_grad():
        assert DetailsInferer()(torch.ones(1, 1, 2, 2, 2), plain)["patient_logits"].tolist() == [[2.0, -1.0]]


def test_in_a_monai_evaluator_pred_is_per_case_and_split_gives_the_logits():
    net, x = _net(), _volume(3)
    data = [{"image": x[i], "label": torch.tensor(i % 2)} for i in range(3)]
    seen = []
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=3),
        network=net,
        inferer=DetailsInferer(),
        postprocessing=SplitDetailsd("pred"),
    )
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: seen.extend(engine.state.output))
    evaluator.run()
    reference = net.forward_details(x)
    assert len(seen) == 3
    for i, item in enumerate(seen):
        torch.testing.assert_close(item["pred"], reference["patient_logits"][i], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(item["cams"], reference["cams"][i], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(item["slice_scores"], reference["slice_scores"][i], rtol=1e-6, atol=1e-6)
        assert item["pred"].shape == (2,) and item["cams"].shape == (2, 4, 4, 8)
        assert "features" not in item  # not among the details moved by default


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_network_gets_the_keyword_too():
    net, x = _net(), _volume(1)
    scripted = torch.jit.script(net)
    assert accepts_return_details(scripted)
    out = DetailsInferer()(x, scripted)
    torch.testing.assert_close(out["patient_logits"], net(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["cams"], net.forward_details(x)["cams"], rtol=1e-6, atol=1e-6)
