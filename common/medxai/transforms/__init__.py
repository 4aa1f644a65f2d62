"""MONAI-style transforms for CT volumes: sanity checks, lung mask and crop, slice-consistent augmentation.

Array transforms beside dictionary transforms (suffix ``d``), on channel-first MetaTensors ``(C, H, W, D)``
with axial slices along the last axis; geometric transforms update the affine and are invertible.
"""

from __future__ import annotations

from medxai.transforms.checks import CheckLabelMapd, CheckVolume, CheckVolumed, case_name
from medxai.transforms.lung import CropToLungd, LungMask, LungMaskd, lung_bounding_box, lung_mask
from medxai.transforms.lung_segmentation import LungSegmentationd
from medxai.transforms.slice_sampling import RandSampleSliced
from medxai.transforms.slices import RandResizedCropSlicesd, ResizeSlicesd, SampleSlicesd, sample_crop_box

__all__ = [
    "CheckVolume",
    "CheckVolumed",
    "CheckLabelMapd",
    "case_name",
    "CropToLungd",
    "LungMask",
    "LungMaskd",
    "lung_bounding_box",
    "lung_mask",
    "LungSegmentationd",
    "RandResizedCropSlicesd",
    "ResizeSlicesd",
    "SampleSlicesd",
    "RandSampleSliced",
    "sample_crop_box",
]
