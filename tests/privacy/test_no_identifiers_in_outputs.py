"""Patient privacy end to end (issue 10): no patient-identifying DICOM attribute reaches any output.

Two fake patients with distinctive identities (name, ID, birth date, accession number, other IDs and names,
institution, physicians, address, telephone, study ID, comments) each have two synthetic chest CT series,
written as DICOM under folders with neutral names (``series_01`` ...). Then, as a user does:

- ``covid19_ct_mil_classification``: tiny training (2 iterations) with TensorBoard and ``--tracking mlflow``
  into a SQLite tracking store in the test's folder; inference (``inference.json``) alone; then
  ``inference.json + explain.json + dicom_output.json`` (LIME / Kernel SHAP, embedding, HTML report, DICOM
  Parametric Map and box Segmentation). The test list also holds two broken series of the first patient
  (a missing slice; a slice file cut short), which must become ``bad_cases.json`` entries.
- ``covid19_ct_transfer_classification`` on single DICOM slices: tiny training (1 epoch, TensorBoard, MLflow)
  and ``inference.json + explain.json + dicom_output.json``.

All runs share one Python process (``monai.bundle.run``, as ``python -m monai.bundle run`` calls it) whose
stdout and stderr are captured. Then every file under the bundle copies, the working folder, the tracking
folder and the demo cache is searched as raw bytes, case-insensitively, in UTF-8, UTF-16 (LE/BE), inside
gzip members, zip members, PNG text chunks (also PNGs embedded in TensorBoard events or as base64 in HTML),
and its path, for each identifier and its variants (DICOM PN components and ``^`` written as space/comma,
birth date in four spellings). The captured log is searched the same way.

Reused from ``tests/bundles/test_dicom_end_to_end.py`` (which checks references, geometry and the pseudonym
in the DICOM objects): the tiny overlays, the slice ordering and the initial-weights helper.
"""

from __future__ import annotations

import base64
import csv
import gzip
import importlib.util
import io
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.config
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bundles"))
sys.path.insert(0, str(REPO / "tests" / "data"))
from bundle_runner import BundleCopy, copy_bundle  # noqa: E402
from dicom_utils import write_ct_series  # noqa: E402
from test_dicom_end_to_end import MIL_TINY, TRANSFER_TINY, _ordered_files  # noqa: E402

from medxai.data.privacy import pseudonym  # noqa: E402

pytest.importorskip("highdicom")
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None

SALT = "site-secret-for-the-privacy-test"  # MEDXAI_PSEUDONYM_SALT of every run
#: Two fake patients: every attribute holds a value that cannot occur by chance in an output.
PATIENTS = [
    {
        "PatientName": "ZZTESTPATIENT^QUINCE",
        "PatientID": "PID-98765-XQ",
        "PatientBirthDate": "19580317",
        "AccessionNumber": "ACC-55501-ZQ",
        "OtherPatientIDs": "OPID-24680-ZK",
        "OtherPatientNames": "ZZALIASNAME^MEDLAR",
        "PatientMotherBirthName": "ZZMOTHERNAME^LOQUAT",
        "IssuerOfPatientID": "ZZISSUER-SAPOTE",
        "InstitutionName": "Quincunx Memorial Clinic",
        "InstitutionAddress": "17 Zzyzx Road, Kumquatville",
        "ReferringPhysicianName": "ZZREFDOC^PERSIMMON",
        "PerformingPhysicianName": "ZZPERFDOC^TAMARIND",
        "OperatorsName": "ZZOPERATOR^TAMARILLO",
        "PatientAddress": "42 Rambutan Lane",
        "PatientTelephoneNumbers": "+1-555-0199-77",
        "StudyID": "STQX-3141",
        "PatientComments": "ZZCOMMENT-FEIJOA",
    },
    {
        "PatientName": "ZZSECONDPATIENT DURIAN",  # no "^", as some exports write names
        "PatientID": "PID-13579-WY",
        "PatientBirthDate": "1963-11-29",  # not DICOM's DA (YYYYMMDD), as some exports write it
        "AccessionNumber": "ACC-77702-WV",
        "OtherPatientIDs": "OPID-11223-WJ",
        "OtherPatientNames": "ZZALIASTWO^MANGOSTEEN",
        "PatientMotherBirthName": "ZZMOTHERTWO^JABUTICABA",
        "IssuerOfPatientID": "ZZISSUER-LONGAN",
        "InstitutionName": "Xylophage Regional Infirmary",
        "InstitutionAddress": "99 Qwertz Street, Pomeloburg",
        "ReferringPhysicianName": "ZZREFDOCTWO^SALAK",
        "PerformingPhysicianName": "ZZPERFDOCTWO^CHERIMOYA",
        "OperatorsName": "ZZOPERATORTWO^PITAYA",
        "PatientAddress": "7 Cupuacu Court",
        "PatientTelephoneNumbers": "+1-555-0142-88",
        "StudyID": "STWY-2718",
        "PatientComments": "ZZCOMMENT-ACEROLA",
    },
]
SERIES = [("series_01", 0), ("series_02", 0), ("series_03", 1), ("series_04", 1)]  # (neutral folder, patient)
BROKEN = [("series_05", "missing_slice"), ("series_06", "truncated_slice")]  # both of patient 0
SLICE = 8  # the slice the transfer bundle classifies (neighbours train it)
MARKER = "=== privacy-test job: "

#: One process runs every job with ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls).
DRIVER = """
import json, sys
from monai.bundle import run
for job in json.loads(sys.argv[1]):
    print(MARKER + job.pop("name"), flush=True)
    run(job.pop("run_id"), **job)
    sys.stdout.flush()
    sys.stderr.flush()
""".replace("MARKER", repr(MARKER))


# ------------------------------------------------------------------------------------------- needles


def _variants(keyword: str, value: str) -> set[str]:
    """The spellings of one identifier that must not appear: the value, PN components and ``^`` written as
    space or comma (DICOM PS3.5 6.2 person names), dates as ISO, European and US dates."""
    found = {value}
    if "^" in value:
        parts = [p for p in value.split("^") if p]
        found |= {" ".join(parts), ", ".join(parts), " ".join(reversed(parts)), "_".join(parts), *parts}
    if keyword.endswith("Date"):
        y, m, d = re.fullmatch(r"(\d{4})-?(\d\d)-?(\d\d)", value).groups()
        found |= {f"{y}{m}{d}", f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}"}
    words = re.findall(r"[A-Za-z]{6,}", value)  # "Quincunx", "Kumquatville", "Rambutan" ... on their own
    found |= {w for w in words if w.lower() not in {"memorial", "clinic", "regional", "infirmary", "street"}}
    return found


NEEDLES = sorted({v for patient in PATIENTS for k, value in patient.items() for v in _variants(k, value)})


def _encodings(needle: str) -> list[bytes]:
    low = needle.lower()
    return [low.encode("utf-8"), low.encode("utf-16-le"), low.encode("utf-16-be")]


NEEDLE_BYTES = {needle: _encodings(needle) for needle in NEEDLES}


# ------------------------------------------------------------------------------------------- search


def _png_text_chunks(raw: bytes) -> Iterator[bytes]:
    """The tEXt/zTXt/iTXt payloads (decompressed) of every PNG found anywhere in ``raw``."""
    signature = b"\x89PNG\r\n\x1a\n"
    start = raw.find(signature)
    while start >= 0:
        pos = start + len(signature)
        while pos + 8 <= len(raw):
            length, kind = struct.unpack(">I4s", raw[pos : pos + 8])
            data = raw[pos + 8 : pos + 8 + length]
            if kind == b"tEXt":
                yield data
            elif kind == b"zTXt":
                yield zlib.decompress(data.split(b"\0", 1)[1][1:])
            elif kind == b"iTXt":
                keyword, rest = data.split(b"\0", 1)
                compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
                yield keyword + (zlib.decompress(text) if compressed else text)
            if kind == b"IEND" or length > len(raw):
                break
            pos += 12 + length
        start = raw.find(signature, start + 1)


def _layers(raw: bytes, depth: int = 0) -> Iterator[bytes]:
    """``raw`` and everything packed inside it: gzip and zip members, base64 data URIs, PNG text chunks."""
    yield raw
    if depth > 3:
        return
    if raw[:2] == b"\x1f\x8b":
        yield from _layers(gzip.decompress(raw), depth + 1)
    if raw[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            for member in archive.namelist():
                yield member.encode()
                yield from _layers(archive.read(member), depth + 1)
    for match in re.finditer(rb"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)", raw):
        yield from _layers(base64.b64decode(match.group(1)), depth + 1)
    yield from _png_text_chunks(raw)


def _leaks(raw: bytes) -> list[str]:
    """The needles found in ``raw`` (any layer, any encoding, any letter case)."""
    found = []
    for layer in _layers(raw):
        low = layer.lower()
        found += [needle for needle, forms in NEEDLE_BYTES.items() if any(form in low for form in forms)]
    return sorted(set(found))


def _search(places: list[Path], logs: list[str]) -> int:
    """Assert that no file (content and path below its place) and no log under ``places`` holds a needle;
    returns the number of files searched."""
    n = 0
    problems = []
    for place in places:
        for f in sorted(place.rglob("*")):
            relative = str(f.relative_to(place)).lower()
            problems += [f"path {f}: {needle}" for needle in NEEDLES if needle.lower() in relative]
            if f.is_file():
                n += 1
                problems += [f"file {f}: {needle}" for needle in _leaks(f.read_bytes())]
    for i, log in enumerate(logs):
        problems += [f"log {i}: {needle}" for needle in _leaks(log.encode("utf-8"))]
    assert not problems, "\n".join(problems[:40])
    return n


def test_the_search_finds_every_needle_in_every_hiding_place():
    """Control: each layer the search opens does reveal an identifier hidden in it."""
    name = PATIENTS[0]["PatientName"]
    png = io.BytesIO()
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "ZZTESTPATIENT QUINCE", zip=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG", pnginfo=info)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", "referred by persimmon, zzrefdoc")
    hidden = {
        "utf16": "Patient: Zztestpatient, Quince".encode("utf-16-le"),
        "gzip": gzip.compress(b"born 1958-03-17"),
        "zip": zipped.getvalue(),
        "png zTXt in a tfevents-like record": b"\x08\x01" + png.getvalue() + b"\x00",
        "base64 png in html": b'<img src="data:image/png;base64,' + base64.b64encode(png.getvalue()) + b'">',
        "plain": b"accession acc-55501-zq",
    }
    expected = {"utf16": "QUINCE", "gzip": "1958-03-17", "zip": "PERSIMMON", "png zTXt in a tfevents-like record":
                "ZZTESTPATIENT QUINCE", "base64 png in html": "QUINCE", "plain": "ACC-55501-ZQ"}  # fmt: skip
    for where, raw in hidden.items():
        assert expected[where] in _leaks(raw), where
    assert _leaks(b"pt-1f3a9c0d2b4e 0.98765 19580318 series_01") == []
    assert name in NEEDLES and "ZZTESTPATIENT QUINCE" in NEEDLES and "17.03.1958" in NEEDLES


def test_dicom_writers_hand_no_identifier_to_highdicom(tmp_path, caplog):
    """The two leaks this test file found in ``medxai.transforms.dicom_outputs`` (fixed there): highdicom
    logged a source ``PatientName`` without ``^`` verbatim, and a birth date that is not a DICOM date
    (``1963-11-29``) failed the whole run with the date in the error message."""
    from medxai.transforms.dicom_outputs import read_source_series, write_box_segmentation, write_parametric_map

    _write_series(tmp_path / "series", np.full((16, 16, 4), -600.0), PATIENTS[1], seed=0)
    headers = read_source_series(tmp_path / "series")
    alias = pseudonym(PATIENTS[1]["PatientID"], salt=SALT)
    frames = np.linspace(0.0, 1.0, 4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    masks = np.zeros((4, 16, 16, 1), np.uint8)
    masks[1:3, 4:9, 5:7, 0] = 1
    (tmp_path / "out").mkdir()
    with caplog.at_level(logging.DEBUG):
        written = [
            write_parametric_map(frames, headers, tmp_path / "out" / "pm.dcm", patient_pseudonym=alias),
            write_box_segmentation(masks, headers, tmp_path / "out" / "seg.dcm", ["box"], patient_pseudonym=alias),
        ]
    assert _leaks(caplog.text.encode()) == []
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.PatientID == alias and ds.PatientBirthDate == "" and _leaks(path.read_bytes()) == []
    np.testing.assert_array_equal(np.sort(pydicom.dcmread(written[0]).pixel_array.ravel()), frames.ravel())
    assert int(pydicom.dcmread(written[1]).pixel_array.sum()) == 2 * 5 * 2
    assert headers[0].PatientName == PATIENTS[1]["PatientName"]  # the caller's headers are left as they were


# ------------------------------------------------------------------------------------------- data


def _write_series(folder: Path, volume: np.ndarray, patient: dict[str, str], seed: int) -> list[Path]:
    hu = np.clip(volume, -1024, 3000).transpose(2, 1, 0)  # (X, Y, Z) -> (slices, rows, columns)
    files = write_ct_series(folder, hu, patient_name=patient["PatientName"], patient_id=patient["PatientID"], seed=seed)
    with pydicom.config.disable_value_validation():  # the non-conformant birth date is meant
        for f in files:
            ds = pydicom.dcmread(f)
            for keyword, value in patient.items():
                setattr(ds, keyword, value)
            ds.save_as(f)
    return files


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """``root/dicom/series_0k``: four good series of the two patients and two broken series of patient 0."""
    from medxai.data.synthetic.ct import generate_ct_dataset

    root = tmp_path_factory.mktemp("privacy_data")
    generated = json.loads(generate_ct_dataset(root / "nifti", num_cases=4, shape=(48, 48, 16), seed=0).read_text())
    records = sorted((r for s in generated.values() if isinstance(s, list) for r in s), key=lambda r: r["image"])
    volumes = [np.asarray(nib.load(root / "nifti" / r["image"]).dataobj, dtype=float) for r in records]
    for k, (folder, patient) in enumerate(SERIES):
        _write_series(root / "dicom" / folder, volumes[k], PATIENTS[patient], seed=k)
    for k, (folder, how) in enumerate(BROKEN):
        files = _ordered_files(Path(shutil.copytree(root / "dicom" / SERIES[0][0], root / "dicom" / folder)))
        if how == "missing_slice":
            files[5].unlink()
        else:  # header intact, pixel data cut short
            files[7].write_bytes(files[7].read_bytes()[:-3000])
    shutil.rmtree(root / "nifti")
    return root


def _mil_datalists(root: Path) -> tuple[Path, Path]:
    """A training datalist (series 1 and 3 train, 2 and 4 validate) and one to infer on (all, and the broken)."""
    series = [{"image": str(root / "dicom" / f), "covid": p, "centre": "A"} for f, p in SERIES]
    broken = [{"image": str(root / "dicom" / f), "covid": 0, "centre": "A"} for f, _ in BROKEN]
    train, infer = root / "mil_train_datalist.json", root / "mil_datalist.json"
    train.write_text(json.dumps({"training": series[0::2], "validation": series[1::2]}))
    infer.write_text(json.dumps({"test": series + broken}))
    return train, infer


def _transfer_datalist(root: Path) -> Path:
    """Slices of each series: two train, one validates, the middle one is the test case."""
    slices = {f: _ordered_files(root / "dicom" / f) for f, _ in SERIES}
    test = [{"image": str(slices[f][SLICE]), "label": p} for f, p in SERIES]
    training = [{"image": str(slices[f][k]), "label": p} for f, p in SERIES for k in (SLICE - 4, SLICE + 4)]
    validation = [{"image": str(slices[f][SLICE + 2]), "label": p} for f, p in SERIES]
    path = root / "transfer_datalist.json"
    path.write_text(json.dumps({"training": training, "validation": validation, "test": test}))
    return path


def _job(name: str, copy: BundleCopy, configs: list[str], run_id: str, tracking: Path | None = None, **kw) -> dict:
    job = {**kw, "name": name, "run_id": run_id, "config_file": copy.config_files(*configs),
           "bundle_root": str(copy.bundle), "meta_file": str(copy.bundle / "configs" / "metadata.json"),
           "logging_file": str(copy.bundle / "configs" / "logging.conf")}  # fmt: skip
    if tracking is not None and HAS_MLFLOW:
        job.update(tracking="mlflow", tracking_uri=f"sqlite:///{tracking / 'mlflow.db'}", experiment_name="privacy")
    return job


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> dict:
    """Train, infer and explain both bundles in one process; returns the copies, the tracking folder and logs."""
    root = tmp_path_factory.mktemp("privacy_runs")
    tracking = root / "tracking"
    tracking.mkdir()
    mil_train, mil_infer = _mil_datalists(cohort)
    mil_overlay = {**MIL_TINY, "dataset_dir": str(mil_infer), "train_num_slices": 8,
                   "batch_size": 2, "num_iterations": 2, "cache_rate": 0.0}  # fmt: skip
    mil = copy_bundle("covid19_ct_mil_classification", root / "mil", mil_overlay)
    transfer_overlay = {**TRANSFER_TINY, "dataset_dir": str(_transfer_datalist(cohort)), "num_epochs": 1,
                        "batch_size": 4, "val_interval": 1}  # fmt: skip
    transfer = copy_bundle("covid19_ct_transfer_classification", root / "transfer", transfer_overlay)
    jobs = [
        _job("mil_training", mil, ["train.json"], "training", tracking, dataset_dir=str(mil_train)),
        _job("mil_inference", mil, ["inference.json"], "run"),
        _job("mil_explain", mil, ["inference.json", "explain.json", "dicom_output.json"], "run"),
        _job("transfer_training", transfer, ["train.json"], "training", tracking),
        _job("transfer_explain", transfer, ["inference.json", "explain.json", "dicom_output.json"], "run"),
    ]
    env = {**mil.env, "MEDXAI_PSEUDONYM_SALT": SALT}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(jobs)], cwd=mil.cwd, env=env, capture_output=True, text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    logs = dict(part.split("\n", 1) for part in result.stdout.split(MARKER)[1:])
    return {"mil": mil, "transfer": transfer, "tracking": tracking, "logs": logs, "stderr": result.stderr,
            "root": root}  # fmt: skip


def _cases(folder: Path) -> list[str]:
    with open(folder / "predictions.csv") as handle:
        return [row["case"] for row in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------------- tests


def test_no_identifier_in_any_output_tracking_or_log(runs, cohort):
    mil, transfer = runs["mil"], runs["transfer"]
    # what must have been written for the search to mean anything
    assert list((mil.bundle / "eval").glob("events.out.tfevents.*"))
    assert list((transfer.bundle / "eval").glob("events.out.tfevents.*"))
    assert (mil.bundle / "eval" / "explain" / "report" / "index.html").is_file()
    assert (transfer.bundle / "eval" / "explain" / "report" / "index.html").is_file()
    assert len(list((mil.bundle / "eval" / "explain").rglob("*_map_pm.dcm"))) == len(SERIES)
    assert len(list((transfer.bundle / "eval" / "explain").rglob("*_map_pm.dcm"))) == len(SERIES)
    if HAS_MLFLOW:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{runs['tracking'] / 'mlflow.db'}")
        tracked = client.search_runs([client.get_experiment_by_name("privacy").experiment_id])
        assert len(tracked) == 2 and all(r.info.status == "FINISHED" for r in tracked)
        assert all(r.data.metrics for r in tracked)
    places = [runs["root"], mil.cache, transfer.cache]  # bundle copies, working folders, tracking, caches
    n_files = _search(places, [*runs["logs"].values(), runs["stderr"]])
    assert n_files > 80
    # the inputs do hold every identifier (the search would find them there)
    source = next((cohort / "dicom" / "series_01").glob("*.dcm")).read_bytes()
    assert {"ZZTESTPATIENT", "PID-98765-XQ", "19580317", "Quincunx"} <= set(_leaks(source))


def test_bad_series_of_the_patient_are_reported_without_identifiers(runs, cohort):
    out = runs["mil"].bundle / "eval" / "explain"
    bad = {entry["case"]: entry["error"] for entry in json.loads((out / "bad_cases.json").read_text())}
    expected = {pseudonym(str(cohort / "dicom" / f), salt=SALT): how for f, how in BROKEN}
    assert set(bad) == set(expected)
    for case, how in expected.items():
        assert bad[case].startswith("InputError: ") and case in bad[case], bad[case]
        assert ("uneven slice gaps" if how == "missing_slice" else "read 15 of 16 slices") in bad[case], bad[case]
        assert str(cohort) not in bad[case] and _leaks(bad[case].encode()) == []
    # the warning lines of the log name the same pseudonyms
    for case in expected:
        assert f"skipped case {case}: InputError" in runs["logs"]["mil_explain"]


def test_outputs_use_a_stable_salted_pseudonym(runs, cohort):
    mil, transfer = runs["mil"], runs["transfer"]
    # series and slice files are named by the salted pseudonym of their path, the same in two runs
    expected = sorted(pseudonym(str(cohort / "dicom" / f), salt=SALT) for f, _ in SERIES)
    inference, explain = mil.bundle / "eval" / "inference", mil.bundle / "eval" / "explain"
    assert sorted(_cases(inference)) == sorted(_cases(explain)) == expected
    assert all(re.fullmatch(r"pt-[0-9a-f]{12}", case) for case in expected)
    assert expected != sorted(pseudonym(str(cohort / "dicom" / f), salt="") for f, _ in SERIES)  # salt used
    # the DICOM objects name each patient by the pseudonym of its PatientID: one per patient, across series
    for patient, identity in enumerate(PATIENTS):
        alias = pseudonym(identity["PatientID"], salt=SALT)
        for case in (pseudonym(str(cohort / "dicom" / f), salt=SALT) for f, p in SERIES if p == patient):
            ds = pydicom.dcmread(explain / case / f"{case}_map_pm.dcm")
            assert ds.PatientID == alias and str(ds.PatientName) == f"{alias}^"
            assert ds.PatientIdentityRemoved == "YES"
            for keyword in identity:
                assert keyword in ("PatientName", "PatientID") or not str(ds.get(keyword, "") or ""), keyword
    slices = {pseudonym(str(_ordered_files(cohort / "dicom" / f)[SLICE]), salt=SALT) for f, _ in SERIES}
    assert set(_cases(transfer.bundle / "eval" / "explain")) == slices
