"""Datalist builders for public lung and brain imaging datasets, and for a hospital's own CSV or folders.

Each builder reads one dataset's documented folder layout (or the manifest of a staged subset) and
returns MONAI datalist records: absolute ``image`` path(s), ``label`` (class index; the mask path for
segmentation sets), ``class_name``, ``patient_id`` where the dataset gives one, and dataset-specific
keys (masks, severity, view, official ``source_split``). Builders are registered by name (timm style)::

    from medxai.data.datasets import build_datalist, list_datasets

    build_datalist("mosmeddata", "/data/MosMedData", output="datalist.json", split="kfold", n_folds=5)

A missing root or sub-folder, an empty dataset, a manifest without a required column, a referenced file
that does not exist, or a label outside the class range raises :class:`medxai.errors.DatasetError`
naming the path (or manifest line) and the problem. Sources, terms and caveats: ``docs/data.md``.
"""

from __future__ import annotations

from medxai.data.datasets._records import merge_groups
from medxai.data.datasets.brain import brain_ventricles_bert_manifest, brain_ventricles_carrieri_manifest
from medxai.data.datasets.covid_ct import (
    cc_ccii,
    covid_ct_ucsd,
    covid_ct_ucsd_manifest,
    medseg100_manifest,
    mosmeddata,
    sars_cov2_ct,
)
from medxai.data.datasets.cxr import (
    CXRNET_CLASSES,
    DEEPCOVID_CLASSES,
    covidx_cxr,
    cxrnet_finding_class,
    cxrnet_four_class,
    deepcovid_three_class,
    ieee8023_cxr,
    ieee8023_cxr_manifest,
    ieee8023_label,
    kermany_cxr,
    kermany_cxr_manifest,
    read_near_duplicates,
)
from medxai.data.datasets.datalist import build_datalist, records_to_datalist, split_records
from medxai.data.datasets.generic import csv_dataset, folder_dataset
from medxai.data.datasets.registry import (
    DatasetSpec,
    build_records,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DatasetSpec",
    "register_dataset",
    "list_datasets",
    "get_dataset_spec",
    "build_records",
    "build_datalist",
    "records_to_datalist",
    "split_records",
    "merge_groups",
    "csv_dataset",
    "folder_dataset",
    "covid_ct_ucsd",
    "covid_ct_ucsd_manifest",
    "sars_cov2_ct",
    "cc_ccii",
    "mosmeddata",
    "medseg100_manifest",
    "covidx_cxr",
    "kermany_cxr",
    "kermany_cxr_manifest",
    "ieee8023_cxr",
    "ieee8023_cxr_manifest",
    "ieee8023_label",
    "read_near_duplicates",
    "CXRNET_CLASSES",
    "DEEPCOVID_CLASSES",
    "cxrnet_finding_class",
    "cxrnet_four_class",
    "deepcovid_three_class",
    "brain_ventricles_bert_manifest",
    "brain_ventricles_carrieri_manifest",
]
