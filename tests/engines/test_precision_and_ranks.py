"""The GPU-only precision switches (:mod:`medxai.engines.precision`), the handlers each ``torchrun`` rank runs
(:mod:`medxai.engines.distributed`) and the channel selection of :func:`medxai.engines.output_maps`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.handlers import (
    CheckpointSaver,
    LrScheduleHandler,
    MLFlowHandler,
    StatsHandler,
    TensorBoardImageHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
)
from monai.networks.nets import UNet

from medxai.engines import (
    ExplanationImageHandler,
    LearningRateLogger,
    amp_enabled,
    handlers_for_rank,
    network_to,
    on_cuda,
    output_maps,
)
from medxai.errors import InputError


def test_amp_is_enabled_on_cuda_devices_only():
    assert amp_enabled(True, torch.device("cuda:1")) and amp_enabled(True, "cuda")
    assert not amp_enabled(True, torch.device("cpu")) and not amp_enabled(True, "cpu")
    assert not amp_enabled(False, "cuda:0")
    assert on_cuda("cuda:0") and not on_cuda("cpu")
    with pytest.raises(InputError, match="gpu0"):
        on_cuda("gpu0")


def test_network_to_cpu_ignores_channels_last_and_computes_the_same():
    torch.manual_seed(0)
    plain = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    switched = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    switched.load_state_dict(plain.state_dict())
    assert network_to(switched, "cpu", channels_last=True) is switched
    for param in switched.parameters():
        assert param.is_contiguous()  # default (contiguous) format: the switch was ignored on CPU
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), switched(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="channels-last is applied on CUDA only")
def test_network_to_cuda_stores_2d_and_3d_kernels_channels_last():
    net2d = network_to(UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0), "cuda", channels_last=True)
    net3d = network_to(UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0), "cuda", channels_last=True)
    kernels2d = [p for p in net2d.parameters() if p.dim() == 4]
    kernels3d = [p for p in net3d.parameters() if p.dim() == 5]
    assert kernels2d and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels2d)
    assert kernels3d and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in kernels3d)
    x = torch.rand(1, 1, 16, 16, device="cuda")
    with torch.no_grad():
        assert net2d(x).is_contiguous(memory_format=torch.channels_last)


def test_handlers_for_rank_keeps_loggers_and_trackers_on_rank_zero(tmp_path):
    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    kept = [
        LrScheduleHandler(torch.optim.lr_scheduler.StepLR(optimizer, 1)),
        ValidationHandler(1, validator=None),
        CheckpointSaver(str(tmp_path), {"model": network}, save_final=True),
    ]
    rank_zero = [
        StatsHandler(),
        TensorBoardStatsHandler(log_dir=str(tmp_path)),
        TensorBoardImageHandler(log_dir=str(tmp_path)),
        ExplanationImageHandler(log_dir=str(tmp_path)),
        LearningRateLogger(optimizer, log_dir=str(tmp_path)),
        MLFlowHandler.__new__(MLFlowHandler),  # not initialised: starting its MLflow client takes seconds
    ]
    handlers = [rank_zero[0], kept[0], rank_zero[1], kept[1], None, *rank_zero[2:], kept[2]]
    assert handlers_for_rank(handlers, 0) == [h for h in handlers if h is not None]
    assert handlers_for_rank(handlers, 1) == kept
    assert handlers_for_rank(None, 3) == []
    with pytest.raises(InputError, match="-1"):
        handlers_for_rank(handlers, -1)


def test_output_maps_sums_the_selected_channels():
    pred = torch.zeros(2, 4, 3, 3)
    pred[:, 0] = 1.0
    pred[0, 0, 0, 0], pred[0, 2, 0, 0] = 0.0, 1.0  # class 2 at (0, 0) of case 0
    pred[1, 0, 1, 2], pred[1, 3, 1, 2] = 0.0, 1.0  # class 3 at (1, 2) of case 1
    engine = SimpleNamespace(state=SimpleNamespace(output={"image": torch.rand(2, 1, 3, 3), "pred": pred}))
    _, foreground = output_maps("image", "pred", [1, 2, 3])(engine)
    expected = torch.zeros(2, 1, 3, 3)
    expected[0, 0, 0, 0] = expected[1, 0, 1, 2] = 1.0
    assert torch.equal(foreground, expected)
    items = [{"image": torch.rand(1, 3, 3), "pred": p} for p in pred]
    decollated = SimpleNamespace(state=SimpleNamespace(output=items))
    assert torch.equal(output_maps("image", "pred", 3)(decollated)[1], pred[:, 3:4])
    assert torch.equal(output_maps("image", "pred", -1)(engine)[1], pred[:, 3:4])
    with pytest.raises(InputError, match=r"\[4\]"):
        output_maps("image", "pred", [1, 4])(engine)
    with pytest.raises(InputError, match="empty"):
        output_maps("image", "pred", [])
