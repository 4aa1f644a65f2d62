from __future__ import annotations

import json
from pathlib import Path

import pytest

import medxai.data.demo as demo
from medxai.errors import DatasetError


@pytest.fixture
def counting_generator(monkeypatch):
    calls = []

    def generate(output_dir, num_cases=3, seed=0, fail=False):
        calls.append((num_cases, seed))
        out = Path(output_dir)
        (out / "images").mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(num_cases):
            (out / "images" / f"{i}.txt").write_text(str(seed))
            records.append({"image": f"images/{i}.txt", "label": i % 2, "class_name": "ab"[i % 2]})
        if fail:
            raise RuntimeError("generator died half way")
        (out / "datalist.json").write_text(json.dumps({"training": records[:-1], "test": records[-1:]}))
        return out / "datalist.json"

    monkeypatch.setattr(demo, "_generator", lambda name: (generate, {"num_cases": 3, "seed": 0}))
    return calls


def test_demo_set_is_generated_once_and_cached(tmp_path, counting_generator):
    first = demo.ensure_demo_dataset("fake", cache_dir=tmp_path)
    second = demo.ensure_demo_dataset("fake", cache_dir=tmp_path)
    assert first == second and first.is_file()
    assert counting_generator == [(3, 0)]
    other = demo.ensure_demo_dataset("fake", cache_dir=tmp_path, num_cases=5)
    assert other != first and counting_generator == [(3, 0), (5, 0)]
    summary = demo.summarize_datalist(other)
    assert summary["splits"]["training"] == {"cases": 4, "by_class": {"a": 2, "b": 2}}
    assert summary["splits"]["test"]["cases"] == 1


def test_interrupted_generation_leaves_nothing_behind(tmp_path, counting_generator):
    with pytest.raises(RuntimeError, match="half way"):
        demo.ensure_demo_dataset("fake", cache_dir=tmp_path, fail=True)
    assert list(tmp_path.iterdir()) == []


def test_resolve_datalist_demo_user_dir_and_errors(tmp_path, counting_generator, monkeypatch):
    monkeypatch.setenv("MEDXAI_CACHE", str(tmp_path / "cache"))
    assert Path(demo.resolve_datalist("", "fake")).parent.parent == tmp_path / "cache"
    assert Path(demo.resolve_datalist(None, "fake")).is_file()

    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetError, match=str(missing)):
        demo.resolve_datalist(str(missing), "fake")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="has no 'datalist.json'"):
        demo.resolve_datalist(str(empty), "fake")
    (empty / "datalist.json").write_text("{}")
    assert demo.resolve_datalist(str(empty), "fake") == str(empty / "datalist.json")
    assert demo.resolve_datalist(str(empty / "datalist.json"), "fake") == str(empty / "datalist.json")


def test_unknown_demo_set_names_the_choices():
    with pytest.raises(DatasetError, match="unknown demo set 'lungs'.*brain, ct, ct_slices, cxr"):
        demo._generator("lungs")


def test_editing_a_sibling_phantom_module_invalidates_the_cache(tmp_path, monkeypatch):
    """``ct_slices`` cuts the ``ct`` phantoms: an edit to any module beside the generator must regenerate."""
    import importlib.util

    package = tmp_path / "generators"
    package.mkdir()
    (package / "phantom.py").write_text("HU = -700\n")
    (package / "slices.py").write_text(
        "import json, pathlib\n"
        "def generate(output_dir, num_cases=1):\n"
        "    out = pathlib.Path(output_dir)\n"
        "    (out / 'datalist.json').write_text(json.dumps({'training': []}))\n"
    )
    spec = importlib.util.spec_from_file_location("slices_under_test", package / "slices.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(demo, "_generator", lambda name: (module.generate, {"num_cases": 1}))
    cache = tmp_path / "cache"

    first = demo.ensure_demo_dataset("ct_slices", cache_dir=cache)
    assert demo.ensure_demo_dataset("ct_slices", cache_dir=cache) == first
    (package / "phantom.py").write_text("HU = -600\n")
    second = demo.ensure_demo_dataset("ct_slices", cache_dir=cache)
    assert second != first and second.is_file() and first.is_file()
