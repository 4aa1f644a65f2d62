"""Shared measurement helpers of the benchmarks in ``scripts/benchmarks/`` (issue 11).

One way to time, summarise and describe a run, so every benchmark reports comparable numbers:

- :func:`timed` returns wall-clock and process CPU seconds with the device synchronised around the call;
  :func:`choose_clock` picks which of the two the goals are judged on (CPU time for a single-threaded CPU
  run on a shared machine, where other processes inflate the wall-clock time but not this process's CPU
  time; wall-clock time otherwise, e.g. on a GPU);
- :func:`interleaved` runs several measurements in interleaved rounds (a load change hits all alike) and
  :func:`summarize` gives their medians;
- :class:`ForwardMeter` counts the images a module's forward passes see and the time spent inside them;
- :func:`reset_peak_memory` / :func:`peak_memory_bytes`: peak resident memory on a CPU (Linux ``VmHWM``,
  reset through ``/proc/self/clear_refs``), ``torch.cuda.max_memory_allocated`` on a GPU;
- :func:`model_flops` (``torch.utils.flop_counter``) and :func:`matmul_peak_flops` (the device's measured
  dense matmul rate), for the physical bound of a measured time;
- :func:`machine_info`, :func:`versions`, :func:`load_average`: what the run ran on.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

CLOCKS = ("wall", "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``, with the device synchronised before and after.

    On a shared CPU machine the process CPU time of a single-threaded run is what the method costs; the
    wall-clock time also counts the time other processes held the cores.
    """
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def choose_clock(clock: str, device: torch.device) -> str:
    """``"auto"``: CPU time for a single-threaded CPU run (robust to other processes), else wall-clock time."""
    if clock != "auto":
        return clock
    return "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


def interleaved(
    measurements: Mapping[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    after_each: Callable[[str, float, float], None] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Run every measurement ``warmup`` times untimed, then ``repeats`` interleaved timed rounds.

    Returns ``{name: {"wall": [...], "cpu": [...]}}`` with one entry per round. ``after_each(name, wall,
    cpu)`` is called after each timed run (e.g. to read counters a measurement filled in).
    """
    for _ in range(warmup):
        for fn in measurements.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in measurements}
    for _ in range(repeats):
        for name, fn in measurements.items():
            wall, cpu = timed(fn, device)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            if after_each is not None:
                after_each(name, wall, cpu)
    return times


def summarize(times: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """``{"wall": [...], "cpu": [...]}`` plus ``median_wall`` and ``median_cpu``."""
    out: dict[str, Any] = {clock: list(times[clock]) for clock in CLOCKS}
    for clock in CLOCKS:
        out[f"median_{clock}"] = statistics.median(times[clock])
    return out


def median_parts(
    records: Sequence[Mapping[str, Mapping[str, float]]], divisor: float = 1.0
) -> dict[str, dict[str, float]]:
    """Per part and clock, the median over runs of ``{part: {"wall": s, "cpu": s}}`` records, divided by
    ``divisor`` (e.g. the iterations or volumes per run)."""
    return {
        part: {clock: statistics.median(r[part][clock] for r in records) / divisor for clock in CLOCKS}
        for part in records[0]
    }


def met(value: float, op: str, bound: float) -> bool:
    """Whether ``value op bound`` holds (``op`` is ``"<="`` or ``">="``)."""
    return value <= bound if op == "<=" else value >= bound


def goal(value: float, op: str, bound: float) -> dict[str, Any]:
    """A goal record: the ratio, the bound, whether it is met and the margin (bound / value or value / bound)."""
    margin = bound / value if op == "<=" else value / bound
    return {"value": value, "op": op, "bound": bound, "met": met(value, op, bound), "margin": margin}


class ForwardMeter:
    """Counts the images the modules' forward passes see and the time spent inside them (forward hooks).

    A method's time minus the time inside the model's forward passes is the method's own overhead, measured
    in the same run. On a GPU the hooks synchronise the device around each forward pass. Nested metered
    modules are counted once (only the outermost call is timed).
    """

    def __init__(self, device: torch.device, *models: torch.nn.Module) -> None:
        self.device = device
        self._start: tuple[float, float] | None = None
        self._depth = 0
        self.handles = []
        self.reset()
        for model in models:
            self.handles.append(model.register_forward_pre_hook(self._pre_hook))
            self.handles.append(model.register_forward_hook(self._hook))

    def _pre_hook(self, module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        self._depth += 1
        if self._depth == 1:
            synchronize(self.device)
            self._start = (time.perf_counter(), time.process_time())

    def _hook(self, module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self._depth -= 1
        if self._depth > 0 or self._start is None:
            return
        synchronize(self.device)
        wall, cpu = self._start
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.images += int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 0
        self.calls += 1

    def reset(self) -> None:
        self.images = self.calls = 0
        self.wall = self.cpu = 0.0

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: ``torch.cuda.reset_peak_memory_stats`` on a GPU; on a CPU glibc's ``malloc_trim``, then
    Linux ``clear_refs`` (5), which resets the resident set's high-water mark to the current resident set."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _malloc_trim() -> None:
    """Return glibc's free heap pages to the system, so memory freed by an earlier run does not sit in the
    resident set and hide the next run's growth (no-op where glibc is not the allocator)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocations on a GPU, resident set (VmHWM) on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _proc_status_bytes("VmHWM")


def current_memory_bytes(device: torch.device) -> int | None:
    """CUDA memory allocated now on a GPU, resident set (VmRSS) on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status_bytes("VmRSS")


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def model_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of ``fn()`` counted by ``torch.utils.flop_counter.FlopCounterMode``
    (matmuls and convolutions, 2 per multiply-add; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_flops(device: torch.device, size: int = 1024, repeats: int = 5, clock: str = "cpu") -> float:
    """Measured dense float32 matmul rate (FLOP/s) of this process on ``device``: the best of ``repeats``
    ``size`` x ``size`` products. A practical peak for convolution networks (which run as GEMMs)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    index = 0 if clock == "wall" else 1
    best = min(timed(lambda: a @ b, device)[index] for _ in range(repeats))
    return 2.0 * size**3 / max(best, 1e-12)


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU, cores, torch threads, device (and GPU name), platform and Python version."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions(names: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the libraries that matter (torch with its build)."""
    default = ["torch", "torchvision", "monai", "pytorch-ignite", "numpy", "nibabel", "scikit-image"]
    found = {}
    for name in [*default, *names]:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["torch"] = torch.__version__  # with its build (CPU / CUDA)
    return found


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_header(
    device: torch.device, argv: Sequence[str] | None, script: str, extra_versions: Sequence[str] = ()
) -> dict[str, Any]:
    """Date, command, machine, versions and load average at the start of a run."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([script, *argv]) if argv is not None else None,
        "machine": machine_info(device),
        "versions": versions(extra_versions),
        "load_average": {"before": load_average()},
    }


def default_device() -> str:
    """``"cuda"`` where a GPU is usable, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_torch(device_name: str, threads: int, seed: int = 0) -> torch.device:
    """The device; ``threads`` > 0 sets torch's intra-op threads; seeds torch."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device_name}: CUDA is not available on this machine")
    return device


def write_json(results: Mapping[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str))


def add_common_arguments(parser: Any, quick_help: str) -> None:
    """The arguments every benchmark takes: ``--quick``, ``--json``, ``--device``, ``--threads``, ``--clock``,
    ``--repeats``, ``--seed``, ``--verbose``."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, default=None, help="save the results to this JSON file")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="time the goals are judged on; auto: process CPU time for a 1-thread CPU run, else wall-clock",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")


class EventTimer:
    """Sums the time between ignite events per named part over a run (wall and process CPU seconds).

    Parameters
    ----------
    engine
        An ignite engine (a MONAI trainer or evaluator); its ``state.device`` is synchronised at each mark.
    spans
        Part name -> (start event, end event), e.g. ``{"data": (Events.GET_BATCH_STARTED,
        Events.GET_BATCH_COMPLETED)}``; registered in order, so a part that ends on the event another part
        starts on is closed first.
    count
        Called with the engine at ``GET_BATCH_COMPLETED``; returns counts (e.g. samples) added to ``counts``.
    """

    def __init__(
        self,
        engine: Any,
        spans: Mapping[str, tuple[Any, Any]],
        count: Callable[[Any], Mapping[str, int]] | None = None,
    ) -> None:
        from ignite.engine import Events

        self.device = engine.state.device
        self.names = list(spans)
        self.reset()
        for name, (start, end) in spans.items():
            engine.add_event_handler(end, self._end, name)
            engine.add_event_handler(start, self._start, name)
        if count is not None:
            engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._count, count)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def reset(self) -> None:
        self._marks: dict[str, tuple[float, float]] = {}
        self.parts = {name: {"wall": 0.0, "cpu": 0.0} for name in self.names}
        self.counts: dict[str, int] = {}
        self.iterations = 0

    def _now(self) -> tuple[float, float]:
        synchronize(self.device)
        return time.perf_counter(), time.process_time()

    def _start(self, engine: Any, name: str) -> None:
        self._marks[name] = self._now()

    def _end(self, engine: Any, name: str) -> None:
        start = self._marks.pop(name, None)
        if start is not None:
            now = self._now()
            self.parts[name]["wall"] += now[0] - start[0]
            self.parts[name]["cpu"] += now[1] - start[1]

    def _count(self, engine: Any, count: Callable[[Any], Mapping[str, int]]) -> None:
        for key, value in count(engine).items():
            self.counts[key] = self.counts.get(key, 0) + int(value)

    def _iteration(self, engine: Any) -> None:
        self.iterations += 1


def run_cli(
    parser: Any,
    argv: Sequence[str] | None,
    run: Callable[[Any], dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
    quick: Callable[[Any], None] | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> dict[str, Any]:
    """Parse ``argv``, apply the quick-mode settings, validate, run, print the table, save the JSON."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick and quick is not None:
        quick(args)
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    results = run(args)
    print(format_table(results))
    write_json(results, args.json)
    return results


def log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)
