#!/usr/bin/env python
"""Model-zoo checks for the MONAI bundles of this repository.

Runs, for every bundle folder under ``bundles/`` (or only the ones named on the command line, as paths or
as names), the checks that the MONAI model-zoo continuous integration applies before it accepts a bundle
(``ci/verify_bundle.py`` and ``ci/verify_properties.py`` of Project-MONAI/model-zoo), and prints one
PASS / FAIL / SKIP row per bundle and check with the reason:

- ``files``: the model-zoo layout is complete (:data:`REQUIRED_FILES`).
- ``metadata``: ``configs/metadata.json`` is valid against the model-zoo schema (``monai.bundle.verify_metadata``
  with the local schema file, so nothing is downloaded).
- ``changelog``: the metadata ``version`` is a key of its ``changelog``.
- ``train_properties`` / ``infer_properties``: ``ConfigWorkflow(train.json, workflow_type="train")`` and
  ``ConfigWorkflow(inference.json, workflow_type="infer")``, once initialised, give ``check_properties() == []``.
- ``net_in_out``: ``monai.bundle.verify_net_in_out`` on ``inference.json#network_def`` with the metadata's
  ``network_data_format``.
- ``ckpt_export``: when ``models/model.pt`` exists, ``monai.bundle.ckpt_export`` to a temporary folder; the
  TorchScript file loads, carries the metadata and reproduces the eager network's output. A checkpoint that
  does not fit ``inference.json``'s network but fits it with ``configs/demo.json`` (what ``medxai demo``
  trains) is exported with that overlay, and the reason names the configs used.
- ``config_json``: every ``configs/*.json`` is strict JSON (no duplicate keys) and no string value holds a ``#``
  outside a config reference (MONAI >= 1.4 rewrites every such ``#`` to ``::``).

Isolation: the MONAI checks of one bundle run in one child Python process (this file with the hidden
``--worker`` flag), on a temporary copy of the bundle without its output folders and with the copy's
path passed as ``bundle_root``. A bundle that crashes, hangs or changes global state (logging
configuration, ``sys.path``, imported modules, random seeds) cannot affect the next one, the checks work
from any working directory, and nothing is written into the verified bundle (instantiating a trainer
creates TensorBoard writers under ``output_dir``, for instance). The checks that need only the files
(``files``, ``changelog``, ``config_json``) run in the calling process.

Usage::

    python scripts/verify_bundles.py                      # every bundle under bundles/
    python scripts/verify_bundles.py covid19_ct_mil_classification path/to/other_bundle
    python scripts/verify_bundles.py --checks files,config_json --json report.json

Exit status 0 when no check fails (SKIP is not a failure), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES_ROOT = REPO_ROOT / "bundles"
DEFAULT_SCHEMA = REPO_ROOT.parent / "shared" / "model_zoo" / "meta_schema_20240725.json"

REQUIRED_FILES: tuple[str, ...] = (
    "LICENSE",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/explain.json",
    "configs/multi_gpu_train.json",
    "configs/demo.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
)
"""Model-zoo layout, relative to the bundle root. ``models/`` is not required: checkpoints are never
committed, so a fresh clone has no ``models/`` folder until a training run creates it."""

METADATA = "configs/metadata.json"
TRAIN_CONFIG = "configs/train.json"
INFER_CONFIG = "configs/inference.json"
LOGGING_CONF = "configs/logging.conf"
CHECKPOINT = "models/model.pt"
#: overlays a checkpoint may have been trained with (``medxai demo`` trains with ``demo.json``), tried in order
#: after the plain inference config when the checkpoint does not fit its network
CHECKPOINT_OVERLAYS: tuple[str, ...] = ("configs/demo.json",)
NET_ID = "network_def"

STATIC_CHECKS: tuple[str, ...] = ("files", "changelog", "config_json")
MONAI_CHECKS: tuple[str, ...] = ("metadata", "train_properties", "infer_properties", "net_in_out", "ckpt_export")
CHECKS: tuple[str, ...] = (
    "files",
    "metadata",
    "changelog",
    "train_properties",
    "infer_properties",
    "net_in_out",
    "ckpt_export",
    "config_json",
)
"""Every check, in report order."""

CHECK_INPUTS: dict[str, tuple[str, ...]] = {
    "metadata": (METADATA,),
    "changelog": (METADATA,),
    "train_properties": (TRAIN_CONFIG, METADATA),
    "infer_properties": (INFER_CONFIG, METADATA),
    "net_in_out": (INFER_CONFIG, METADATA),
    "ckpt_export": (INFER_CONFIG, METADATA),
}
"""Files a check reads: when one is missing or not valid JSON the check is skipped (``files`` or
``config_json`` already fails for it)."""

OUTPUT_FOLDERS: tuple[str, ...] = ("eval", "runs", "logs", "output*", "mlruns", "__pycache__", "models")
"""Left out of the temporary copy the MONAI checks run on (``models/model.pt`` is read in place)."""

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# MONAI's reference matcher (``ReferenceResolver.id_matcher``: ``@`` then word characters joined by the id
# separator) written for the raw file, where the separator is still ``#``; it also covers relative ids (``@##A``).
_REFERENCE = re.compile(r"@[\w#]*")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check on one bundle.

    Attributes
    ----------
    check
        Name of the check, one of :data:`CHECKS`.
    status
        ``"PASS"``, ``"FAIL"`` or ``"SKIP"``.
    reason
        What was found; for a FAIL the offending file, key or value.
    """

    check: str
    status: str
    reason: str = ""


@dataclass
class BundleReport:
    """All check results of one bundle, in :data:`CHECKS` order."""

    name: str
    path: Path
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return all(r.status != FAIL for r in self.results)

    def result(self, check: str) -> CheckResult:
        """The result of ``check``; raises ``KeyError`` when it was not run."""
        for r in self.results:
            if r.check == check:
                return r
        raise KeyError(f"check {check!r} was not run on bundle {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: name, path, passed and the list of results."""
        results = [asdict(r) for r in self.results]
        return {"name": self.name, "path": str(self.path), "passed": self.passed, "results": results}


# --------------------------------------------------------------------------------------------------- discovery


def find_bundles(bundles_root: Path) -> list[Path]:
    """Every bundle folder directly under ``bundles_root``, sorted by name.

    Every visible sub-folder counts, so a folder that lacks the bundle layout is reported by the ``files``
    check rather than silently ignored. Returns ``[]`` when ``bundles_root`` does not exist.
    """
    if not bundles_root.is_dir():
        return []
    return sorted(p for p in bundles_root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def resolve_bundles(names: Sequence[str], bundles_root: Path) -> list[Path]:
    """Turn command-line arguments into bundle folders: an existing folder is taken as given, anything else
    is looked up as a name under ``bundles_root`` (a name that is not there is kept, and fails ``files``)."""
    resolved = []
    for name in names:
        path = Path(name)
        resolved.append(path if path.is_dir() else bundles_root / name)
    return [p.resolve() for p in resolved]


# --------------------------------------------------------------------------------------------- static checks


def _duplicate_key_guard(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def load_json_strict(path: Path, label: str | None = None) -> Any:
    """Load a JSON file, refusing duplicate keys (``json`` keeps the last one silently, so an overlay that
    repeats a key loses the first value without a word). ``label`` names the file in errors (default: its name).

    Raises
    ------
    ValueError
        Naming the file and, for syntax errors, the line and column.
    """
    label = path.name if label is None else label
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_duplicate_key_guard)
    except json.JSONDecodeError as e:
        raise ValueError(f"{label} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{label} is not valid JSON: {e}") from e


def hash_outside_references(value: str) -> bool:
    """Whether MONAI would rewrite a ``#`` of this config string value.

    MONAI >= 1.4 replaces every ``#`` in a string value by its id separator ``::``
    (``ReferenceResolver.normalize_id``). That is harmless only where ``#`` *is* a separator: in a macro
    (``"%train#postprocessing"``), in a value that is one reference (``"@train#trainer"``) and in the
    references of an expression (``"$@train#trainer.run()"``). Anywhere else (plain text, a string literal
    or a comment inside an expression) the value changes.

    Examples
    --------
    >>> hash_outside_references("$@train#trainer.run()")
    False
    >>> hash_outside_references("$@output_dir + '/map#1.png'")
    True
    """
    if "#" not in value:
        return False
    if value.startswith("%"):
        return False
    if value.startswith("@") and _REFERENCE.fullmatch(value):
        return False
    if value.startswith("$"):
        return "#" in _REFERENCE.sub("", value)
    return True


def iter_strings(config: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(id, value)`` for every string value of a nested config; ids join keys and list indices with
    ``#``, as config ids are written."""
    if isinstance(config, Mapping):
        items: Iterator[tuple[Any, Any]] = iter(config.items())
    elif isinstance(config, list):
        items = iter(enumerate(config))
    else:
        if isinstance(config, str):
            yield prefix, config
        return
    for key, value in items:
        yield from iter_strings(value, f"{prefix}#{key}" if prefix else str(key))


def check_files(bundle_dir: Path) -> CheckResult:
    """Check 1: the files of :data:`REQUIRED_FILES` exist."""
    if not bundle_dir.is_dir():
        return CheckResult("files", FAIL, f"bundle folder {bundle_dir} does not exist")
    missing = [f for f in REQUIRED_FILES if not (bundle_dir / f).is_file()]
    if missing:
        return CheckResult("files", FAIL, "missing " + ", ".join(missing))
    return CheckResult("files", PASS, f"all {len(REQUIRED_FILES)} required files present")


def check_changelog(bundle_dir: Path) -> CheckResult:
    """Check 3: the metadata ``version`` is a key of the metadata ``changelog``."""
    metadata = load_json_strict(bundle_dir / METADATA)
    if not isinstance(metadata, dict):
        return CheckResult("changelog", FAIL, f"{METADATA} is a {type(metadata).__name__}, not an object")
    if "version" not in metadata:
        return CheckResult("changelog", FAIL, f"{METADATA} has no 'version'")
    version = metadata["version"]
    changelog = metadata.get("changelog")
    if not isinstance(changelog, dict):
        return CheckResult("changelog", FAIL, f"{METADATA} has no 'changelog' object (found {changelog!r})")
    if version not in changelog:
        keys = ", ".join(map(str, changelog)) or "none"
        return CheckResult("changelog", FAIL, f"version {version!r} is not a key of changelog (keys: {keys})")
    return CheckResult("changelog", PASS, f"version {version!r} is in changelog")


def check_config_json(bundle_dir: Path) -> CheckResult:
    """Check 7: every ``configs/*.json`` is strict JSON and no string value has a rewritten ``#``."""
    configs = sorted((bundle_dir / "configs").glob("*.json"))
    if not configs:
        return CheckResult("config_json", FAIL, "no configs/*.json files")
    problems: list[str] = []
    for path in configs:
        rel = path.relative_to(bundle_dir).as_posix()
        try:
            config = load_json_strict(path, label=rel)
        except ValueError as e:
            problems.append(str(e))
            continue
        if not isinstance(config, dict):
            problems.append(f"{rel}: top level is a {type(config).__name__}, not an object")
            continue
        offending = [key for key, value in iter_strings(config) if hash_outside_references(value)]
        if offending:
            problems.append(f"{rel}: '#' outside a config reference in " + ", ".join(offending))
    if problems:
        return CheckResult("config_json", FAIL, "; ".join(problems))
    return CheckResult("config_json", PASS, f"{len(configs)} config files valid, no '#' in string values")


# ---------------------------------------------------------------------------------------------- MONAI checks


def describe_exception(error: BaseException, limit: int = 400, causes: bool = True) -> str:
    """One line naming an exception and, with ``causes``, the exceptions it was raised from, outermost first
    (MONAI wraps the real error of a config expression in ``RuntimeError: Failed to evaluate ...``)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        text = text if len(text) <= limit else text[: limit - 3] + "..."
        part = f"{type(current).__name__}: {text}" if text else type(current).__name__
        if part not in parts:
            parts.append(part)
        current = (current.__cause__ or current.__context__) if causes else None
    return " <- ".join(parts)


def check_metadata(bundle_dir: Path, schema: Path | None, workdir: Path) -> CheckResult:
    """Check 2: ``monai.bundle.verify_metadata`` against ``schema`` (a local file, so nothing is downloaded);
    with ``schema=None`` the URL in the metadata's ``schema`` field is downloaded into ``workdir``."""
    from monai.bundle import verify_metadata

    schema_file = schema if schema is not None else workdir / "schema.json"
    try:
        verify_metadata(meta_file=str(bundle_dir / METADATA), filepath=str(schema_file))
    except Exception as e:  # noqa: BLE001 - any failure of the MONAI check is the check's result
        # verify_metadata already condenses the jsonschema error, whose cause would print the whole schema
        reason = f"{describe_exception(e, causes=False)} (schema file: {schema_file.name})"
        return CheckResult("metadata", FAIL, reason)
    source = schema_file.name if schema is not None else "the schema downloaded from the metadata 'schema' URL"
    return CheckResult("metadata", PASS, f"valid against {source}")


def check_properties(bundle_dir: Path, workflow_type: str) -> CheckResult:
    """Check 4: ``ConfigWorkflow(...).initialize()`` then ``check_properties()`` returns ``[]`` (or
    ``None``) for ``train.json`` (``workflow_type="train"``) or ``inference.json`` (``"infer"``).

    ``initialize`` is needed first: ``check_properties`` reads each required property, which parses it.
    So the check also proves that every required component (trainer, datasets, evaluator ...) instantiates.
    """
    from monai.bundle import ConfigWorkflow

    if workflow_type not in ("train", "infer"):
        raise ValueError(f"workflow_type must be 'train' or 'infer', got {workflow_type!r}")
    name, config = (
        ("train_properties", TRAIN_CONFIG) if workflow_type == "train" else ("infer_properties", INFER_CONFIG)
    )
    try:
        workflow = ConfigWorkflow(
            config_file=str(bundle_dir / config),
            meta_file=str(bundle_dir / METADATA),
            logging_file=str(bundle_dir / LOGGING_CONF),
            workflow_type=workflow_type,
            bundle_root=str(bundle_dir),
        )
        workflow.initialize()
        missing = workflow.check_properties()
    except Exception as e:  # noqa: BLE001
        return CheckResult(name, FAIL, f"{config}: {describe_exception(e)}")
    if missing:
        return CheckResult(name, FAIL, f"{config}: missing or wrong properties {sorted(missing)}")
    return CheckResult(name, PASS, f"{config}: all {workflow_type} properties present")


def _fake_input(metadata: Mapping[str, Any], seed: int = 0) -> Any:
    """Seeded random input of the metadata's ``network_data_format`` image, shape ``(1, C, *spatial)``.

    The spatial shape comes from MONAI's own helper, so symbolic sizes (``"16*n"``, ``"2**p"``, ``"*"``) become the
    same numbers as in ``verify_net_in_out`` and ``ckpt_export``.
    """
    import torch
    from monai.bundle.scripts import _get_fake_spatial_shape  # private, but what verify_net_in_out uses
    from monai.utils import get_equivalent_dtype

    image = metadata["network_data_format"]["inputs"]["image"]
    shape = (1, image["num_channels"], *_get_fake_spatial_shape(image["spatial_shape"]))
    dtype = get_equivalent_dtype(image["dtype"], torch.Tensor)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def check_net_in_out(bundle_dir: Path, device: str) -> CheckResult:
    """Check 5: ``monai.bundle.verify_net_in_out`` for ``inference.json#network_def``: a random input of the
    metadata's input shape and dtype gives an output with the metadata's ``pred`` channels and dtype."""
    from monai.bundle import verify_net_in_out

    try:
        verify_net_in_out(
            net_id=NET_ID,
            meta_file=str(bundle_dir / METADATA),
            config_file=str(bundle_dir / INFER_CONFIG),
            device=device,
            bundle_root=str(bundle_dir),
        )
        metadata = load_json_strict(bundle_dir / METADATA)
        shape = tuple(_fake_input(metadata).shape)
        pred = metadata["network_data_format"]["outputs"]["pred"]
    except Exception as e:  # noqa: BLE001
        return CheckResult("net_in_out", FAIL, f"{INFER_CONFIG}#{NET_ID}: {describe_exception(e)}")
    return CheckResult(
        "net_in_out", PASS, f"input {shape} gives {pred['num_channels']} output channels of {pred['dtype']}"
    )


def _tensors(output: Any) -> list[Any]:
    """The tensors of a network output (a tensor, or lists / tuples / dicts of them), in a fixed order."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for key in sorted(output) for t in _tensors(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    raise TypeError(f"network output of type {type(output).__name__} holds no tensors")


def compare_outputs(actual: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4) -> tuple[bool, float]:
    """Whether two network outputs agree elementwise within ``|actual - expected| <= atol + rtol * |expected|``
    (``torch.allclose``), and their largest absolute difference.

    Raises
    ------
    ValueError
        When the outputs differ in the number or shapes of their tensors.
    """
    import torch

    actual_tensors, expected_tensors = _tensors(actual), _tensors(expected)
    if len(actual_tensors) != len(expected_tensors):
        raise ValueError(f"outputs hold {len(actual_tensors)} vs {len(expected_tensors)} tensors")
    close, largest = True, 0.0
    for a, e in zip(actual_tensors, expected_tensors):
        if a.shape != e.shape:
            raise ValueError(f"output shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}")
        a, e = a.detach().float().cpu(), e.detach().float().cpu()
        close = close and torch.allclose(a, e, rtol=rtol, atol=atol)
        largest = max(largest, float((a - e).abs().max()) if e.numel() else 0.0)
    return close, largest


def check_ckpt_export(
    bundle_dir: Path, checkpoint: Path, device: str, workdir: Path, atol: float = 1e-5, rtol: float = 1e-4
) -> CheckResult:
    """Check 6: ``monai.bundle.ckpt_export`` of ``inference.json#network_def`` with ``checkpoint`` to
    ``workdir/model.ts``; the TorchScript file must load (``monai.data.load_net_with_metadata``), carry the
    bundle's metadata version, and reproduce the eager network (same plain state dict, loaded strictly with
    ``weights_only=True``) on a seeded random input of the metadata's shape, within ``atol + rtol * |eager|``."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export
    from monai.data import load_net_with_metadata

    if not checkpoint.is_file():
        return CheckResult("ckpt_export", SKIP, f"no {CHECKPOINT}")
    exported = workdir / "model.ts"
    try:
        configs = _configs_fitting_checkpoint(bundle_dir, checkpoint, device)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint fails this check, not the whole run
        return CheckResult("ckpt_export", FAIL, f"{checkpoint.name}: {describe_exception(e)}")
    used = " + ".join(str(Path(c).relative_to(bundle_dir)) for c in configs)
    try:
        ckpt_export(
            net_id=NET_ID,
            filepath=str(exported),
            ckpt_file=str(checkpoint),
            meta_file=str(bundle_dir / METADATA),
            config_file=configs if len(configs) > 1 else configs[0],
            bundle_root=str(bundle_dir),
        )
        scripted, exported_meta, _ = load_net_with_metadata(str(exported), map_location=device)
        metadata = load_json_strict(bundle_dir / METADATA)
        if exported_meta.get("version") != metadata.get("version"):
            return CheckResult(
                "ckpt_export",
                FAIL,
                f"exported metadata version {exported_meta.get('version')!r} != {metadata.get('version')!r}",
            )
        eager = _network(bundle_dir, configs)
        eager.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
        eager.to(device).eval()
        scripted.eval()
        x = _fake_input(metadata).to(device)
        with torch.no_grad():
            close, difference = compare_outputs(scripted(x), eager(x), atol=atol, rtol=rtol)
    except Exception as e:  # noqa: BLE001
        return CheckResult("ckpt_export", FAIL, f"{used}#{NET_ID}: {describe_exception(e)}")
    if not close:
        return CheckResult(
            "ckpt_export",
            FAIL,
            f"TorchScript output differs from the eager network by up to {difference:.3g} "
            f"(allowed {atol:g} + {rtol:g} * |eager|) on input {tuple(x.shape)}",
        )
    return CheckResult(
        "ckpt_export",
        PASS,
        f"TorchScript export ({used}) loads; max |TorchScript - eager| = {difference:.3g} on input {tuple(x.shape)}",
    )


def _network(bundle_dir: Path, configs: list[str]) -> Any:
    """``network_def`` of ``configs`` merged in order, with the bundle's metadata and root."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser.read_meta(str(bundle_dir / METADATA))
    parser["bundle_root"] = str(bundle_dir)
    return parser.get_parsed_content(NET_ID)


def _configs_fitting_checkpoint(bundle_dir: Path, checkpoint: Path, device: str) -> list[str]:
    """The inference config, plus the first of :data:`CHECKPOINT_OVERLAYS` whose network the checkpoint fits
    (keys and shapes) when the plain config's does not; the plain config when none fits (the export then
    fails with the loading error, naming the mismatch)."""
    from medxai.serialization import load_weights

    state = load_weights(checkpoint, map_location=device, what="checkpoint")
    plain = [str(bundle_dir / INFER_CONFIG)]
    candidates = [plain] + [plain + [str(bundle_dir / o)] for o in CHECKPOINT_OVERLAYS if (bundle_dir / o).is_file()]
    for configs in candidates:
        try:
            expected = _network(bundle_dir, configs).state_dict()
        except Exception:  # noqa: BLE001 - a config that does not build cannot be the one
            continue
        if expected.keys() == state.keys() and all(expected[k].shape == state[k].shape for k in state):
            return configs
    return plain


def _ignore_outputs(bundle_dir: Path) -> Callable[[str, list[str]], set[str]]:
    """``shutil.copytree`` ignore function that drops :data:`OUTPUT_FOLDERS` at the bundle root only (a
    vendored package may well have a ``models`` or ``output_*`` module deeper down)."""
    import fnmatch

    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory).resolve() != bundle_dir:
            return set()
        return {n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in OUTPUT_FOLDERS)}

    return ignore


def run_monai_checks(
    bundle_dir: Path, checks: Sequence[str], schema: Path | None = None, device: str = "cpu"
) -> list[CheckResult]:
    """Run the MONAI checks in this process on a temporary copy of ``bundle_dir``.

    This is what the ``--worker`` child does; call it directly only in a process you can discard (it
    configures logging from the bundle's ``logging.conf`` and evaluates the bundle's config expressions).
    Reasons name ``bundle_dir``, not the copy.
    """
    bundle_dir = bundle_dir.resolve()
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="verify_bundle_") as tmp:
        workdir = Path(tmp)
        copy = workdir / bundle_dir.name
        shutil.copytree(bundle_dir, copy, ignore=_ignore_outputs(bundle_dir))
        for check in checks:
            if check == "metadata":
                result = check_metadata(copy, schema, workdir)
            elif check == "train_properties":
                result = check_properties(copy, "train")
            elif check == "infer_properties":
                result = check_properties(copy, "infer")
            elif check == "net_in_out":
                result = check_net_in_out(copy, device)
            elif check == "ckpt_export":
                result = check_ckpt_export(copy, bundle_dir / CHECKPOINT, device, workdir)
            else:
                raise ValueError(f"{check!r} is not a MONAI check; expected one of {MONAI_CHECKS}")
            reason = result.reason.replace(str(copy), str(bundle_dir))
            results.append(CheckResult(result.check, result.status, reason))
    return results


def run_monai_checks_isolated(
    bundle_dir: Path,
    checks: Sequence[str],
    schema: Path | None,
    device: str = "cpu",
    timeout: float = 600.0,
    verbose: bool = False,
) -> list[CheckResult]:
    """Run :func:`run_monai_checks` in a child Python process (working directory: a fresh temporary folder)
    and read its results back; a crash or a timeout fails every requested check with the child's last
    words."""
    with tempfile.TemporaryDirectory(prefix="verify_bundles_worker_") as tmp:
        output = Path(tmp) / "results.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-output", str(output)]
        command += ["--checks", ",".join(checks), "--device", device, str(bundle_dir)]
        command += ["--schema", str(schema)] if schema is not None else ["--download-schema"]
        try:
            completed = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [CheckResult(c, FAIL, f"checks did not finish within {timeout:g} s") for c in checks]
        if verbose:
            sys.stderr.write(completed.stdout + completed.stderr)
        if completed.returncode != 0 or not output.is_file():
            tail = " | ".join(line.strip() for line in completed.stderr.strip().splitlines()[-3:])
            reason = f"check process exited with code {completed.returncode}: {tail}"
            return [CheckResult(c, FAIL, reason) for c in checks]
        return [CheckResult(**r) for r in json.loads(output.read_text(encoding="utf-8"))]


# -------------------------------------------------------------------------------------------------- driver


def default_schema() -> Path | None:
    """The model-zoo metadata schema shipped beside the repository (:data:`DEFAULT_SCHEMA`), or ``None``
    when it is absent (then ``verify_metadata`` downloads the URL in the metadata's ``schema`` field)."""
    return DEFAULT_SCHEMA if DEFAULT_SCHEMA.is_file() else None


def _unreadable_inputs(bundle_dir: Path) -> dict[str, str]:
    """Map each file of :data:`CHECK_INPUTS` that is missing or not valid JSON to the reason."""
    problems: dict[str, str] = {}
    for rel in sorted({f for files in CHECK_INPUTS.values() for f in files}):
        path = bundle_dir / rel
        if not path.is_file():
            problems[rel] = f"{rel} is missing"
            continue
        try:
            load_json_strict(path)
        except ValueError:
            problems[rel] = f"{rel} is not valid JSON"
    return problems


def verify_bundle(
    bundle_dir: Path,
    checks: Sequence[str] = CHECKS,
    schema: Path | None = None,
    device: str = "cpu",
    timeout: float = 600.0,
    verbose: bool = False,
) -> BundleReport:
    """Run ``checks`` on one bundle and return its report (results in :data:`CHECKS` order).

    A check whose input file is missing or not valid JSON is skipped (``files`` or ``config_json`` fails
    instead), and so is ``ckpt_export`` without ``models/model.pt``.

    Parameters
    ----------
    bundle_dir
        The bundle root folder.
    checks
        Names from :data:`CHECKS`.
    schema
        Local model-zoo metadata schema file; ``None``: :func:`default_schema` (the metadata's ``schema`` URL is
        downloaded when the repository's copy is absent).
    device
        Torch device for ``net_in_out`` and ``ckpt_export``.
    timeout
        Seconds allowed for the MONAI checks of this bundle (one child process).
    verbose
        Echo the child process's output to stderr.

    Raises
    ------
    ValueError
        For a check name not in :data:`CHECKS`.
    FileNotFoundError
        When ``schema`` is given and is not a file.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; expected names from {CHECKS}")
    if schema is not None and not Path(schema).is_file():
        raise FileNotFoundError(f"schema file {schema} does not exist")
    schema = Path(schema).resolve() if schema is not None else default_schema()
    bundle_dir = Path(bundle_dir).resolve()
    results: dict[str, CheckResult] = {}
    if "files" in checks:
        results["files"] = check_files(bundle_dir)
    unreadable = _unreadable_inputs(bundle_dir)
    for check, inputs in CHECK_INPUTS.items():
        if check in checks and any(f in unreadable for f in inputs):
            reasons = "; ".join(unreadable[f] for f in inputs if f in unreadable)
            results[check] = CheckResult(check, SKIP, f"cannot run: {reasons}")
    if "ckpt_export" in checks and "ckpt_export" not in results and not (bundle_dir / CHECKPOINT).is_file():
        reason = f"no {CHECKPOINT} (checkpoints are not committed)"
        results["ckpt_export"] = CheckResult("ckpt_export", SKIP, reason)
    if "changelog" in checks and "changelog" not in results:
        results["changelog"] = check_changelog(bundle_dir)
    if "config_json" in checks:
        if bundle_dir.is_dir():
            results["config_json"] = check_config_json(bundle_dir)
        else:
            results["config_json"] = CheckResult("config_json", SKIP, "cannot run: bundle folder missing")
    pending = [c for c in MONAI_CHECKS if c in checks and c not in results]
    if pending:
        for result in run_monai_checks_isolated(bundle_dir, pending, schema, device, timeout, verbose):
            results[result.check] = result
    return BundleReport(bundle_dir.name, bundle_dir, [results[c] for c in CHECKS if c in results])


def format_table(reports: Sequence[BundleReport]) -> str:
    """Plain-text table: one row per bundle and check (bundle, check, result, reason)."""
    rows = [(r.name, c.check, c.status, c.reason) for r in reports for c in r.results]
    header = ("bundle", "check", "result", "reason")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = []
    for row in [header, tuple("-" * w for w in widths) + ("-" * 6,), *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return "\n".join(line.rstrip() for line in lines)


def _parse_checks(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown checks {unknown or text!r}; choose from {', '.join(CHECKS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="verify_bundles.py",
        description="Model-zoo checks (layout, metadata schema, changelog, workflow properties, network "
        "input/output, TorchScript export, config strings) for MONAI bundles.",
    )
    parser.add_argument(
        "bundles", nargs="*", help="bundle folders or names under --bundles-root (default: every bundle there)"
    )
    parser.add_argument(
        "--bundles-root", type=Path, default=DEFAULT_BUNDLES_ROOT, help="folder holding the bundles (default: bundles/)"
    )
    parser.add_argument(
        "--schema",
        type=Path,
        default=None,
        help="model-zoo metadata schema file (default: ../shared/model_zoo/meta_schema_20240725.json relative to "
        "the repository root when present, otherwise the metadata's 'schema' URL is downloaded)",
    )
    parser.add_argument(
        "--checks", type=_parse_checks, default=list(CHECKS), help=f"comma-separated subset of: {', '.join(CHECKS)}"
    )
    parser.add_argument("--device", default="cpu", help="torch device for net_in_out and ckpt_export (default cpu)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the MONAI checks of one bundle")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the MONAI output of every bundle")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--download-schema", action="store_true", help=argparse.SUPPRESS)
    return parser


def _worker(args: argparse.Namespace) -> int:
    """Child-process entry: run the MONAI checks of one bundle and write the results as JSON."""
    if len(args.bundles) != 1 or args.worker_output is None:
        raise SystemExit("--worker needs exactly one bundle and --worker-output")
    schema = None if args.download_schema else args.schema
    results = run_monai_checks(Path(args.bundles[0]), args.checks, schema, args.device)
    args.worker_output.write_text(json.dumps([asdict(r) for r in results]), encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (0: no check failed, 1: some check failed)."""
    args = build_parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.schema is not None and not args.schema.is_file():
        print(f"schema file {args.schema} does not exist", file=sys.stderr)
        return 1
    if args.bundles:
        bundle_dirs = resolve_bundles(args.bundles, args.bundles_root)
    else:
        bundle_dirs = find_bundles(args.bundles_root)
    if not bundle_dirs:
        print(f"no bundles under {args.bundles_root}: nothing to verify")
        if args.json is not None:
            args.json.write_text(json.dumps([], indent=2), encoding="utf-8")
        return 0
    reports = [
        verify_bundle(bundle_dir, args.checks, args.schema, args.device, args.timeout, args.verbose)
        for bundle_dir in bundle_dirs
    ]
    print(format_table(reports))
    failed = [r.name for r in reports if not r.passed]
    print(
        f"\n{len(reports)} bundle(s) verified: {len(reports) - len(failed)} passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
    )
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=2), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
