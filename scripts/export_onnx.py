#!/usr/bin/env python
"""Export a bundle's ``network_def`` to ONNX with MONAI and measure onnxruntime against PyTorch eager.

Runs ``monai.bundle.onnx_export`` (what ``python -m monai.bundle onnx_export network_def ...`` runs) on
``configs/inference.json`` plus the given overlays and ``--set`` overrides, with the converter arguments of
:func:`medxai.export.onnx_converter_kwargs` (input ``image``, output ``pred``, dynamic batch axis, onnxruntime
verification within ``--atol`` / ``--rtol``), then feeds seeded random inputs of every ``--batch-sizes`` to the
ONNX model (onnxruntime, CPU) and to the eager network holding the same weights, and prints one JSON object:
configs, input shape, export seconds, file size, the largest ``|onnxruntime - eager|`` per batch size, machine,
library versions and date (also written to ``--json``).

Without ``--ckpt`` the network is randomly initialised (``--seed``) and its state dict saved next to the
output, so the check needs no trained model. A network that cannot be exported prints the exception and exits 1.

Usage::

    python scripts/export_onnx.py bundles/cxr_lung_segmentation --output /tmp/lung.onnx
    python scripts/export_onnx.py bundles/covid19_cxrnet_classification --config configs/demo.json \\
        --ckpt bundles/covid19_cxrnet_classification/models/model.pt --output /tmp/cxrnet.onnx
    python scripts/export_onnx.py bundles/cxr_lung_segmentation --set 'unet_channels=[4, 8, 16]' ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

INFER_CONFIG = "configs/inference.json"
METADATA = "configs/metadata.json"
NET_ID = "network_def"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs to a dict; each value is parsed as JSON when it is valid JSON, else kept a string."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def build_network(bundle: Path, configs: list[str], overrides: dict[str, Any]) -> tuple[Any, Any]:
    """The config parser of ``configs`` (merged in order) with ``overrides``, the bundle's metadata and root,
    and its ``network_def``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser.read_meta(str(bundle / METADATA))
    for key, value in {**overrides, "bundle_root": str(bundle)}.items():
        parser[key] = value
    return parser, parser.get_parsed_content(NET_ID)


def _emit(report: dict[str, Any], path: Path | None) -> None:
    """Print the report as JSON, and write it to ``path`` when given."""
    text = json.dumps(report, indent=1)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def _versions() -> dict[str, str]:
    names = ("torch", "monai", "onnx", "onnxruntime", "onnxscript")
    return {n: importlib.metadata.version(n) for n in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bundle folder")
    ap.add_argument("--config", action="append", default=[], help="overlay after inference.json (bundle-relative)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (JSON value)")
    ap.add_argument("--ckpt", type=Path, help="plain state dict; default: random init with --seed")
    ap.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    ap.add_argument("--input-shape", type=int, nargs="+", help="export input (1, C, *spatial); default: metadata")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the report to this file")
    args = ap.parse_args(argv)

    import torch
    from monai.bundle import onnx_export
    from monai.bundle.scripts import _get_fake_input_shape  # private, but what onnx_export itself uses

    from medxai.export import onnx_converter_kwargs, onnx_max_abs_difference

    bundle = args.bundle.resolve()
    configs = [str(bundle / INFER_CONFIG)] + [str(bundle / c) for c in args.config]
    overrides = parse_overrides(args.set)
    torch.manual_seed(args.seed)
    parser, network = build_network(bundle, configs, overrides)
    ckpt = args.ckpt
    if ckpt is None:
        ckpt = args.output.with_suffix(".random_init.pt")
        torch.save(network.state_dict(), ckpt)
    shape = list(args.input_shape) if args.input_shape else list(_get_fake_input_shape(parser))
    report: dict[str, Any] = {
        "bundle": bundle.name,
        "configs": [str(Path(c).relative_to(bundle)) for c in configs],
        "overrides": overrides,
        "network": type(network).__name__,
        "checkpoint": str(args.ckpt) if args.ckpt else f"random init, seed {args.seed}",
        "input_shape": shape,
        "atol": args.atol,
        "rtol": args.rtol,
    }
    start = time.perf_counter()
    try:
        onnx_export(
            net_id=NET_ID,
            filepath=str(args.output),
            ckpt_file=str(ckpt),
            meta_file=str(bundle / METADATA),
            config_file=configs,
            input_shape=shape,
            converter_kwargs=onnx_converter_kwargs(args.atol, args.rtol),
            **{**overrides, "bundle_root": str(bundle)},
        )
    except Exception as e:  # noqa: BLE001 - the report names whatever the exporter raised
        traceback.print_exc()
        report["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        _emit(report, args.json)
        return 1
    report["export_s"] = round(time.perf_counter() - start, 1)
    report["onnx_mb"] = round(args.output.stat().st_size / 1e6, 2)
    network.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    generator = torch.Generator().manual_seed(args.seed)
    report["max_abs_difference"] = {}
    for b in args.batch_sizes:
        x = torch.rand([b, *shape[1:]], generator=generator)
        try:
            report["max_abs_difference"][str(b)] = onnx_max_abs_difference(args.output, network, [x])
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common base class
            report["max_abs_difference"][str(b)] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    report["machine"] = f"{platform.machine()} {platform.processor() or platform.system()}, CPU"
    report["versions"] = _versions()
    report["date"] = dt.date.today().isoformat()
    _emit(report, args.json)
    return 0 if all(isinstance(d, float) for d in report["max_abs_difference"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
