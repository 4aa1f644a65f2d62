"""A registry of dataset builders (timm style): ``@register_dataset(...)`` and ``build_records(name, root)``.

A builder is a function ``builder(root, **kwargs) -> list[record]`` that reads one public dataset's folder
layout (or manifest) and returns MONAI datalist entries with absolute paths. Its :class:`DatasetSpec`
says what the records mean, so :func:`medxai.data.datasets.build_datalist` can split any of them the same
way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, Literal

from medxai.data.datasets._records import Record
from medxai.errors import DatasetError

__all__ = ["DatasetSpec", "register_dataset", "list_datasets", "get_dataset_spec", "build_records"]

Builder = Callable[..., list[Record]]
ClassNames = tuple[str, ...] | Callable[[Mapping[str, Any]], Sequence[str] | None] | None


@dataclass(frozen=True)
class DatasetSpec:
    """What a registered builder returns.

    Attributes
    ----------
    name
        Registry name.
    builder
        ``builder(root, **kwargs) -> list[record]``.
    task
        ``"classification"`` (``label`` is a class index) or ``"segmentation"`` (``label`` is a mask path,
        MONAI's convention, loadable with ``load_decathlon_datalist(..., is_segmentation=True)``).
    class_names
        Class names in label order; or a function of the builder's keyword arguments returning them (for
        ``label_mode`` switches); ``None`` when they depend on the data (taken from the records).
    group_key
        Record key whose value must not be shared between splits (patients, or merged duplicate groups).
    stratify_key
        Record key that splits are stratified by.
    patient_ids
        Whether the dataset says which patient an image belongs to. Without them every image is treated
        as its own patient, and splits may leak patients: the datalist metadata records this.
    """

    name: str
    builder: Builder
    task: Literal["classification", "segmentation"] = "classification"
    class_names: ClassNames = None
    group_key: str = "patient_id"
    stratify_key: str = "label"
    patient_ids: bool = True

    def resolve_class_names(self, builder_kwargs: Mapping[str, Any]) -> list[str] | None:
        """Class names for a build with ``builder_kwargs``, or ``None`` when only the records can tell."""
        names = self.class_names(builder_kwargs) if callable(self.class_names) else self.class_names
        return None if names is None else list(names)


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    task: Literal["classification", "segmentation"] = "classification",
    class_names: ClassNames = None,
    group_key: str = "patient_id",
    stratify_key: str = "label",
    patient_ids: bool = True,
) -> Callable[[Builder], Builder]:
    """Function decorator adding a dataset builder to the registry under ``name`` (lower case)."""

    def decorator(builder: Builder) -> Builder:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key].builder is not builder:
            raise ValueError(f"dataset name '{key}' is already registered by {_REGISTRY[key].builder.__name__}.")
        _REGISTRY[key] = DatasetSpec(key, builder, task, class_names, group_key, stratify_key, patient_ids)
        return builder

    return decorator


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name``."""
    key = name.lower()
    if key not in _REGISTRY:
        raise DatasetError(f"unknown dataset '{name}'; available: {', '.join(list_datasets())}.")
    return _REGISTRY[key]


def build_records(name: str, root: str | PathLike, **kwargs: Any) -> list[Record]:
    """Run the builder registered as ``name`` on ``root``; keyword arguments go to the builder."""
    return get_dataset_spec(name).builder(root, **kwargs)
