from __future__ import annotations

import json

import pytest

from medxai.data.datalist import load_datalist
from medxai.errors import DatasetError


@pytest.fixture
def datalist(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"case{i}.nii.gz").write_bytes(b"x")
    content = {
        "training": [{"image": f"images/case{i}.nii.gz", "covid": i % 2, "label": 2} for i in range(2)],
        "test": [{"image": "images/case2.nii.gz", "covid": 1, "label": 0}],
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content))
    return path


def test_paths_resolved_and_label_key_copied(datalist):
    records = load_datalist(datalist, "training", label_key="covid", num_classes=2)
    assert [r["label"] for r in records] == [0, 1]
    assert records[0]["image"] == str(datalist.parent / "images" / "case0.nii.gz")


def test_label_outside_range_names_the_case(datalist):
    with pytest.raises(DatasetError, match=r"case0.nii.gz: label 2 is outside the class range \[0, 2\)"):
        load_datalist(datalist, "training", label_key="label", num_classes=2)


def test_missing_split_file_and_key(datalist, tmp_path):
    with pytest.raises(DatasetError, match=r"has no 'validation' list; it has \['training', 'test'\]"):
        load_datalist(datalist, "validation")
    with pytest.raises(DatasetError, match="lacks \\['severity'\\]"):
        load_datalist(datalist, "test", label_key="severity")
    (datalist.parent / "images" / "case2.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case2.nii.gz: image file .* does not exist"):
        load_datalist(datalist, "test")
    with pytest.raises(DatasetError, match="does not exist"):
        load_datalist(tmp_path / "nope.json")


def test_malformed_json_and_non_integer_label(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [ {"image": "a"} ')
    with pytest.raises(DatasetError, match="not valid JSON.*line 1"):
        load_datalist(bad)
    (tmp_path / "a.png").write_bytes(b"x")
    bad.write_text(json.dumps({"training": [{"image": "a.png", "label": "COVID"}]}))
    with pytest.raises(DatasetError, match="label 'label' = 'COVID' is not an integer"):
        load_datalist(bad)
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(DatasetError, match="non-empty list"):
        load_datalist(bad)
