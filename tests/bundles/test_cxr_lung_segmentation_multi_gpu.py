"""multi_gpu_train.json of cxr_lung_segmentation runs under torchrun: two CPU ranks with the gloo backend."""

from __future__ import annotations

import torch
from bundle_runner import REPO, copy_bundle
from monai.networks.nets import UNet

BUNDLE = REPO / "bundles" / "cxr_lung_segmentation"

TINY = {
    "demo_args": {"num_cases": 20, "size": [64, 64], "fractions": {"training": 0.6, "validation": 0.2, "test": 0.2}},
    "image_size": [32, 32],
    "unet_channels": [4, 8, 16],
    "unet_strides": [2, 2],
    "unet_num_res_units": 0,
    "batch_size": 2,
    "num_iterations": 6,
    "val_interval": 1,
    "num_workers": 0,
}


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, TINY)
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    # 12 training images on 2 ranks with batch 2: 3 iterations per epoch and rank
    assert "Epoch: 1/2, Iter: 3/3" in log and "val_mean_dice" in log
    # CheckpointSaver unwraps DistributedDataParallel: a plain UNet state dict that inference.json loads
    state = torch.load(copy.bundle / "models" / "model.pt", weights_only=True)
    network = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)
    network.load_state_dict(state)
