"""Load test of batch inference: a cohort of synthetic CT volumes with bad inputs and injected faults.

Builds a cohort of ``--cases`` synthetic chest CT phantoms (:func:`medxai.data.synthetic.ct.generate_ct_case`,
``--shape`` voxels, NIfTI), mixes in ``--bad-per-kind`` bad inputs of each kind in :data:`BAD_KINDS` spread
evenly through the datalist, injects the faults in :data:`FAULTS` into good cases, then runs the
``covid19_ct_mil_classification`` bundle's ``inference.json`` exactly as a user does::

    python -m monai.bundle run --config_file "['configs/inference.json', 'load_test.json']" \\
        --bundle_root BUNDLE --dataset_dir DATALIST --output_dir OUT

with the overlay :data:`OVERLAY` (the ``"tiny"`` backbone at 64 x 64, ``num_workers`` 0) and the untrained
network's initial weights (``torch.manual_seed(0)``) as ``models/model.pt``: the test is about reading,
failing cleanly and not leaking, not accuracy. While it runs, the inference process's resident memory
(``VmRSS`` from ``/proc/<pid>/status``) and the number of cases written are sampled every
``--interval`` seconds. Afterwards every case is accounted for:

- good cases: each must have its outputs (``<case>/<case>_summary.json``, ``_map.nii.gz``, ``_boxes.json``,
  ``_overlay.png``) and a row in ``predictions.csv``; one without is *lost*;
- bad inputs and faulted cases: each must be in ``bad_cases.json`` with a reason; one missing is *unrecorded*;
- memory: the largest RSS after warm-up (the first ``--warmup`` fraction of good cases, at least 2) may exceed
  the RSS after warm-up by at most ``--max-growth`` (a fraction, default 10%);
- throughput: good cases per second in the first and the last quarter of the good cases (from the
  modification times of their summaries).

The results go to ``--results`` (JSON). The exit status is 1 when a good case is lost, a bad case is
unrecorded, a good case is reported bad, the memory bound is exceeded or the inference run fails.
``--quick`` runs 12 good volumes of 48 x 48 x 16 (four of them faulted) and one bad input of each kind: 22 cases.

Run from the repository root (``python scripts/reliability/load_test.py``); ``docs/reliability.md``
records a full run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = "covid19_ct_mil_classification"
#: Overlay merged over ``inference.json``: a CPU-sized network, no worker processes (so the one process
#: sampled holds all the work).
OVERLAY = {"backbone": "tiny", "image_size": [64, 64], "section_length": 4, "top_k": 2, "num_workers": 0}

#: Bad inputs, each written in place of a case's image (what the datalist names):
BAD_KINDS = {
    "missing": "the file does not exist",
    "truncated_nifti": "a .nii.gz cut to a third of its bytes",
    "text_as_nifti": "a text file named .nii.gz",
    "empty_file": "a file of 0 bytes named .nii.gz",
    "nan_volume": "a volume with NaN voxels",
    "inf_volume": "a volume with an infinite voxel",
    "too_short": "a volume of 0 slices; one of 1 or 2 slices is a valid input (partial MIL sections)",
    "image_2d": "a 2D NIfTI image",
    "four_d": "a 4D NIfTI (three frames)",
    "empty_folder": "an empty folder (read as a DICOM series)",
}

#: Faults injected into good cases after the datalist is written:
FAULTS = {
    "deleted_during_run": "a good case of the last quarter deleted once the first quarter is written",
    "truncated_during_run": "a good case of the last quarter cut to a third once the first quarter is written",
    "permission_denied": "a good case made unreadable (chmod 000); root reads it anyway",
    "not_a_file": "a good case replaced by a socket file (not a regular file) after the datalist is written",
}
#: Faults the :class:`Monitor` applies while the inference runs.
DURING_RUN = ("deleted_during_run", "truncated_during_run")
OUTPUT_SUFFIXES = ("_summary.json", "_map.nii.gz", "_boxes.json", "_overlay.png")


@dataclass
class Case:
    """One datalist entry and what must become of it."""

    name: str
    path: Path
    kind: str  # "good", a BAD_KINDS key or a FAULTS key
    enforced: bool = True  # False: a fault that had no effect (chmod 000 as root), the case is expected good

    @property
    def expected_bad(self) -> bool:
        return self.kind != "good" and self.enforced


@dataclass
class Sample:
    """One measurement during the run: seconds since start, RSS and peak RSS (MiB), good cases written."""

    t: float
    rss_mib: float
    hwm_mib: float
    written: int


@dataclass
class Monitor:
    """Samples the inference process; applies the :data:`DURING_RUN` faults once ``fault_after`` good cases
    are written (to cases of the last quarter, which must not have been read yet)."""

    pid: int
    out: Path
    interval: float
    faulted: list[Case]
    fault_after: int
    samples: list[Sample] = field(default_factory=list)
    faulted_at: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            status = _proc_status(self.pid)
            if status is None:
                break
            written = sum(1 for _ in self.out.glob(f"*/*{OUTPUT_SUFFIXES[0]}")) if self.out.is_dir() else 0
            self.samples.append(Sample(time.monotonic() - start, status[0], status[1], written))
            if self.faulted and self.faulted_at is None and written >= self.fault_after:
                for case in self.faulted:
                    if (self.out / case.name).exists():  # already read: the fault came too late
                        raise RuntimeError(f"case {case.name} was written before the fault {case.kind}")
                    if case.kind == "deleted_during_run":
                        case.path.unlink()
                    else:  # a copy in progress: the first third of the file
                        case.path.write_bytes(case.path.read_bytes()[: case.path.stat().st_size // 3])
                self.faulted_at = written
            self.stop.wait(self.interval)


def _proc_status(pid: int) -> tuple[float, float] | None:
    """``(VmRSS, VmHWM)`` of ``pid`` in MiB from ``/proc/<pid>/status``; ``None`` once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = float(rest.split()[0]) / 1024.0  # kB -> MiB
    if "VmRSS" not in values:  # a zombie has no memory lines
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


# ------------------------------------------------------------------------------------------- cohort


def _write_bad(kind: str, path: Path, good_volume: np.ndarray, affine: np.ndarray) -> Path:
    """Write the bad input ``kind`` for a case whose image would be ``path``; returns the path to list."""
    import nibabel as nib

    if kind == "missing":
        return path
    if kind == "empty_folder":
        folder = path.with_name(path.name.replace(".nii.gz", ""))
        folder.mkdir()
        return folder
    if kind == "text_as_nifti":
        path.write_text("patient list exported by mistake\nid,name\n1,nobody\n")
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "truncated_nifti":
        full = gzip.compress(nib.Nifti1Image(good_volume.astype(np.int16), affine).to_bytes())
        path.write_bytes(full[: len(full) // 3])
    else:
        volume = good_volume.astype(np.float32)
        if kind == "nan_volume":
            volume[10:20, 10:20, 3] = np.nan
        elif kind == "inf_volume":
            volume[5, 5, 5] = np.inf
        elif kind == "too_short":
            volume = volume[..., :0]
        elif kind == "image_2d":
            volume = volume[..., volume.shape[2] // 2]
        elif kind == "four_d":
            volume = np.stack([volume] * 3, axis=-1)
        else:
            raise ValueError(f"unknown bad kind {kind!r}")
        nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def make_cohort(work: Path, n_good: int, bad_per_kind: int, shape: Sequence[int], seed: int = 0) -> list[Case]:
    """Generate the cohort under ``work/data`` and write ``work/data/datalist.json``; returns every case in
    datalist order. Bad inputs are spread evenly; the faulted cases are chosen among the good ones (the
    deleted one in the last quarter) and faulted by :func:`inject_faults`."""
    from medxai.data.synthetic.ct import generate_ct_case
    from medxai.data.synthetic.io import save_nifti
    from medxai.transforms.outputs import output_case_name  # the name the bundle writes a case under

    data = work / "data"
    data.mkdir(parents=True)
    bad_kinds = [kind for _ in range(bad_per_kind) for kind in BAD_KINDS]
    total = n_good + len(bad_kinds)
    bad_positions = set(np.linspace(1, total - 2, len(bad_kinds)).round().astype(int).tolist()) if bad_kinds else set()
    if len(bad_positions) != len(bad_kinds):
        raise ValueError(f"{len(bad_kinds)} bad inputs do not fit between {n_good} good cases")
    cases: list[Case] = []
    kinds = iter(bad_kinds)
    last = None
    for position in range(total):
        path = data / f"case_{position:04d}.nii.gz"
        if position in bad_positions:
            kind = next(kinds)
            path = _write_bad(kind, path, last.image, last.affine)  # type: ignore[union-attr]
            cases.append(Case(output_case_name(str(path)), path, kind))
            continue
        label = ("normal", "pneumonia", "covid19")[position % 3]
        last = generate_ct_case(seed=seed + position, label=label, severity="moderate", shape=tuple(shape))
        save_nifti(np.round(last.image), last.affine, path, dtype=np.int16)
        cases.append(Case(output_case_name(str(path)), path, "good"))
    records = [{"image": str(c.path), "covid": int(i % 3 == 2), "centre": "A"} for i, c in enumerate(cases)]
    (data / "datalist.json").write_text(json.dumps({"test": records}, indent=1))
    good = [c for c in cases if c.kind == "good"]
    # faults: those during the run on cases of the last quarter; the others in the second quarter
    good[-2].kind, good[-4].kind = DURING_RUN
    good[len(good) // 3].kind = "permission_denied"
    good[len(good) // 3 + 1].kind = "not_a_file"
    return cases


def inject_faults(cases: Sequence[Case]) -> None:
    """Apply the faults that act before the run (:data:`DURING_RUN` act during it, see :class:`Monitor`)."""
    for case in cases:
        if case.kind == "permission_denied":
            case.path.chmod(0)
            try:
                with open(case.path, "rb") as handle:
                    handle.read(1)
                case.enforced = False  # root (CAP_DAC_OVERRIDE) reads it anyway: the case stays good
            except PermissionError:
                pass
        elif case.kind == "not_a_file":
            case.path.unlink()
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(case.path))  # a socket file where the image was
            server.close()


def prepare_bundle(work: Path) -> Path:
    """Copy the bundle's configs to ``work/bundle``, write the overlay and the untrained network's weights."""
    import torch
    from monai.bundle import ConfigParser

    bundle = work / "bundle"
    shutil.copytree(REPO / "bundles" / BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    (bundle / "load_test.json").write_text(json.dumps(OVERLAY))
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "load_test.json")])
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


# ------------------------------------------------------------------------------------------- run


def run_inference(work: Path, bundle: Path, cases: Sequence[Case], interval: float) -> tuple[int, Monitor, float]:
    """Run the bundle's inference on ``work/data/datalist.json`` into ``work/out`` while a :class:`Monitor`
    samples it; returns the exit status, the monitor and the wall time."""
    out = work / "out"
    configs = [str(bundle / "configs" / "inference.json"), str(bundle / "load_test.json")]
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs), "--bundle_root", str(bundle),
        "--dataset_dir", str(work / "data" / "datalist.json"), "--output_dir", str(out),
        "--logging_file", str(bundle / "configs" / "logging.conf"),
    ]  # fmt: skip
    env = {**os.environ, "MEDXAI_CACHE": str(work / "cache")}
    good = [c for c in cases if not c.expected_bad or c.kind in DURING_RUN]
    faulted = [c for c in cases if c.kind in DURING_RUN]
    start = time.monotonic()
    with open(work / "inference.log", "w") as log:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        monitor = Monitor(process.pid, out, interval, faulted, max(1, len(good) // 4))
        thread = threading.Thread(target=monitor.run, daemon=True)
        thread.start()
        status = process.wait()
        monitor.stop.set()
        thread.join()
    return status, monitor, time.monotonic() - start


# ------------------------------------------------------------------------------------------- analysis


def _quarter_rate(times: Sequence[float]) -> float | None:
    """Cases per second over ``times`` (sorted completion times of consecutive cases)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def analyse(
    work: Path, cases: Sequence[Case], status: int, monitor: Monitor, wall: float, warmup: float, max_growth: float
) -> dict[str, Any]:
    """Account for every case and measure memory and throughput; ``result["failures"]`` lists what failed."""
    out = work / "out"
    failures: list[str] = []
    if status != 0:
        failures.append(f"inference exited with status {status}; see {work / 'inference.log'}")
    report_path = out / "bad_cases.json"
    reported = {e["case"]: e["error"] for e in json.loads(report_path.read_text())} if report_path.is_file() else {}
    rows: set[str] = set()
    if (out / "predictions.csv").is_file():
        with open(out / "predictions.csv") as handle:
            rows = {row["case"] for row in csv.DictReader(handle)}
    expected_good = [c for c in cases if not c.expected_bad]
    expected_bad = [c for c in cases if c.expected_bad]
    lost = [c.name for c in expected_good if c.name not in rows or not all(
        (out / c.name / f"{c.name}{suffix}").is_file() for suffix in OUTPUT_SUFFIXES)]  # fmt: skip
    unrecorded = [c.name for c in expected_bad if not reported.get(c.name, "").strip()]
    reported_good = [c.name for c in expected_good if c.name in reported]
    written_bad = [c.name for c in expected_bad if c.name in rows or (out / c.name).exists()]
    unknown = sorted(set(reported) - {c.name for c in cases})
    for what, names in (("good cases lost", lost), ("bad cases unrecorded", unrecorded),
                        ("good cases reported bad", reported_good), ("bad cases with outputs", written_bad),
                        ("unknown cases reported", unknown)):  # fmt: skip
        if names:
            failures.append(f"{len(names)} {what}: {', '.join(names[:10])}")
    if any(c.kind in DURING_RUN for c in cases) and monitor.faulted_at is None:
        failures.append(f"the faults {', '.join(DURING_RUN)} were not injected (the run ended first)")

    # memory: start (first case written), after warm-up, end (all good cases written), max growth after warm-up
    samples = monitor.samples
    n_good = len(expected_good)
    n_warm = max(2, int(np.ceil(warmup * n_good)))
    memory: dict[str, Any] = {"samples": len(samples), "interval_s": monitor.interval}
    written = [s for s in samples if s.written >= 1]
    warm = [s for s in samples if s.written >= n_warm]
    if written and warm:
        done = [s for s in warm if s.written >= n_good] or [warm[-1]]
        after = [s for s in warm if s.t <= done[0].t]
        memory.update(
            rss_start_mib=round(written[0].rss_mib, 1),
            rss_after_warmup_mib=round(warm[0].rss_mib, 1),
            rss_end_mib=round(done[0].rss_mib, 1),
            rss_max_after_warmup_mib=round(max(s.rss_mib for s in after), 1),
            peak_rss_mib=round(max(s.hwm_mib for s in samples), 1),
            warmup_cases=n_warm,
        )
        growth = memory["rss_max_after_warmup_mib"] - memory["rss_after_warmup_mib"]
        bound = max_growth * memory["rss_after_warmup_mib"]
        memory.update(max_growth_mib=round(growth, 1), growth_bound_mib=round(bound, 1),
                      growth_bound=f"{max_growth:.0%} of the RSS after warm-up")  # fmt: skip
        if growth > bound:
            failures.append(f"memory grew by {growth:.1f} MiB after warm-up, more than the bound {bound:.1f} MiB")
    else:
        failures.append("too few memory samples: the run ended before warm-up")

    # throughput: good cases per second in the first and the last quarter (summary modification times)
    times = sorted(
        (out / c.name / f"{c.name}_summary.json").stat().st_mtime for c in expected_good if c.name not in lost
    )
    quarter = max(2, len(times) // 4)
    first, last = _quarter_rate(times[:quarter]), _quarter_rate(times[-quarter:])
    throughput = {
        "cases_per_quarter": quarter,
        "first_quarter_cases_per_s": None if first is None else round(first, 2),
        "last_quarter_cases_per_s": None if last is None else round(last, 2),
        "overall_cases_per_s": round((len(cases)) / wall, 2),
        "wall_s": round(wall, 1),
    }
    return {
        "cases_tried": len(cases),
        "good_cases_expected": n_good,
        "good_cases_written": n_good - len(lost),
        "bad_inputs_tried": sum(c.kind in BAD_KINDS for c in cases),
        "faults_injected": sum(c.kind in FAULTS for c in cases),
        "bad_cases_expected": len(expected_bad),
        "bad_cases_recorded": len(expected_bad) - len(unrecorded),
        "lost_cases": lost,
        "unrecorded_bad_cases": unrecorded,
        "good_cases_reported_bad": reported_good,
        "bad": [{"case": c.name, "kind": c.kind, "reason": reported.get(c.name)} for c in expected_bad],
        "faults": [{"case": c.name, "kind": c.kind, "description": FAULTS[c.kind], "enforced": c.enforced,
                    "reason": reported.get(c.name)} for c in cases if c.kind in FAULTS],  # fmt: skip
        "during_run_faults_after_good_cases_written": monitor.faulted_at,
        "memory": memory,
        "throughput": throughput,
        "exit_status": status,
        "failures": failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300, help="good synthetic volumes (default 300)")
    parser.add_argument("--bad-per-kind", type=int, default=3, help="bad inputs of each kind (default 3)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=None, help="volume shape X Y Z (default 64 64 24; quick: 48 48 16)"
    )
    parser.add_argument("--quick", action="store_true", help="12 good volumes, one bad input of each kind")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default WORK/results.json)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of good cases that warms up")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up (fraction)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    n_good, bad_per_kind = (12, 1) if args.quick else (args.cases, args.bad_per_kind)
    args.shape = args.shape or ([48, 48, 16] if args.quick else [64, 64, 24])
    work = args.work or Path(tempfile.mkdtemp(prefix="medxai_load_test_"))
    work.mkdir(parents=True, exist_ok=True)
    started, started_at = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
    cases = make_cohort(work, n_good, bad_per_kind, args.shape)
    bundle = prepare_bundle(work)
    inject_faults(cases)
    prepared = time.monotonic() - started
    status, monitor, wall = run_inference(work, bundle, cases, args.interval)
    result = analyse(work, cases, status, monitor, wall, args.warmup, args.max_growth)
    result["setup"] = {
        "command": " ".join(["python", "scripts/reliability/load_test.py", *(sys.argv[1:] if argv is None else argv)]),
        "bundle": BUNDLE, "overlay": OVERLAY, "weights": "untrained (torch.manual_seed(0) initial weights)",
        "shape": list(args.shape), "good_cases": n_good, "bad_per_kind": bad_per_kind,
        "bad_kinds": BAD_KINDS, "cohort_seconds": round(prepared, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(), "started": started_at.isoformat(timespec="seconds"),
        "euid": os.geteuid(), "work": str(work),
    }  # fmt: skip
    results = args.results or work / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("cases_tried", "good_cases_written", "bad_cases_recorded", "lost_cases")}
    print(json.dumps({**summary, "memory": result["memory"], "throughput": result["throughput"]}, indent=1))
    print(f"results: {results}")
    for failure in result["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    if not args.keep and args.work is None and not result["failures"]:
        for name in ("data", "bundle", "out", "cache"):  # keep results.json and inference.log
            shutil.rmtree(work / name, ignore_errors=True)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
