"""Self-contained bundle archives: package a bundle with its weights and a vendored ``medxai``, extract safely.

:func:`package_bundle` writes ``<output_dir>/<bundle>_v<version>.zip`` holding one top-level folder ``<bundle>/``
with the bundle's ``configs/``, ``docs/``, ``LICENSE`` (and ``scripts/`` where a bundle has one), its trained
``models/model.pt`` and a copy of the ``medxai`` package at ``<bundle>/medxai/``. The configs reference
``medxai`` in ``imports`` and ``_target_``; ``monai.bundle`` resolves those already in ``initialize``, while it
puts the bundle root on ``sys.path`` only when ``run()`` starts, so the bundle root has to be importable from
the start: ``python -m monai.bundle`` run *from the extracted bundle folder* has it (``-m`` puts the working
directory first on ``sys.path``); from anywhere else set ``PYTHONPATH=<bundle folder>`` (see :data:`RUN_DOCS`).

:func:`extract_bundle` checks every member before writing anything and refuses the ones that would land outside
the target folder (absolute paths, ``..``, links) or overwrite an existing file.

:func:`bundle_requirements` reads which third-party distributions a bundle's configs pull in through the
``medxai`` modules they reference (their import closure), for checking ``required_packages_version``.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import stat
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import medxai
from medxai.errors import MedXAIError

__all__ = [
    "ArchiveError",
    "BundleRequirements",
    "RUN_DOCS",
    "archive_name",
    "bundle_requirements",
    "bundle_version",
    "extract_bundle",
    "package_bundle",
]

PACKAGE = "medxai"
WEIGHTS = PurePosixPath("models") / "model.pt"
BUNDLE_PARTS = ("configs", "docs", "scripts", "LICENSE")
METADATA = PurePosixPath("configs") / "metadata.json"
PACKAGED_DOC = PurePosixPath("docs") / "packaged_bundle.md"
# this repository's own distribution: vendored in the archive, so the packaged metadata does not require it
SELF_DISTRIBUTION = "medxai-bundles"
# MONAI's base requirements, stated by monai_version / pytorch_version / numpy_version rather than listed
BASE_DISTRIBUTIONS = frozenset({"monai", "torch", "numpy"})
# a fixed timestamp for every member, so packaging the same files twice gives the same bytes
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]*")
_SKIP_NAMES = frozenset({"__pycache__", ".DS_Store"})
_SKIP_SUFFIXES = frozenset({".pyc", ".pyo"})

RUN_DOCS = """\
# Running this packaged bundle

This folder is a MONAI Bundle packaged by `scripts/package_bundle.py` of medxai-bundles. Besides `configs/`,
`docs/` and `models/model.pt` (the trained weights) it holds a copy of the `medxai` package (`medxai/`), so
nothing from the medxai-bundles repository has to be installed: only MONAI and the third-party packages in
`configs/metadata.json` (`monai_version`, `pytorch_version`, `numpy_version`, `required_packages_version`;
`optional_packages` lists what opt-in features need: ONNX export, DICOM input through ITK, DICOM output):

    pip install monai==<monai_version> torch==<pytorch_version> <name>==<version> ...

The configs import `medxai` when `monai.bundle` resolves the first config item (in `initialize`), while it
adds the bundle folder to `sys.path` only when `run` starts; a failed import at that point stays failed
("OptionalImportError: import medxai"). So the bundle folder must be importable from the start. Either run
from inside the bundle folder (`python -m` puts the working directory first on `sys.path`):

    cd {name}
    python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir /path/to/data

or, from any other folder, put the bundle folder on `PYTHONPATH`:

    PYTHONPATH=/path/to/{name} python -m monai.bundle run \\
        --config_file /path/to/{name}/configs/inference.json --bundle_root /path/to/{name} \\
        --dataset_dir /path/to/data

Either way `python -c "import medxai; print(medxai.__file__)"` run the same way shows which copy is used: a
`medxai` installed in the environment (for example the repository, installed editable) comes after the working
directory and `PYTHONPATH` on `sys.path`, so the bundle's copy wins. See docs/README.md for every config, its
options and outputs.
"""


class ArchiveError(MedXAIError):
    """A bundle folder that cannot be packaged, or an archive member that cannot be extracted safely."""


def bundle_version(bundle_dir: str | Path) -> str:
    """The ``version`` of ``<bundle_dir>/configs/metadata.json``."""
    metadata = _read_metadata(Path(bundle_dir))
    version = metadata.get("version")
    if not isinstance(version, str):
        raise ArchiveError(f"{Path(bundle_dir) / METADATA}: 'version' is {version!r}, not a string")
    return version


def archive_name(bundle_name: str, version: str) -> str:
    """``<bundle_name>_v<version>.zip``; ``version`` may only hold letters, digits, ``.``, ``+`` and ``-``."""
    if not _VERSION.fullmatch(version):
        raise ArchiveError(f"version {version!r} may only hold letters, digits, '.', '+' and '-'")
    return f"{bundle_name}_v{version}.zip"


def package_bundle(
    bundle_dir: str | Path,
    output_dir: str | Path = "dist",
    version: str | None = None,
    allow_missing_weights: bool = False,
    package_dir: str | Path | None = None,
) -> Path:
    """Write ``<output_dir>/<bundle>_v<version>.zip``: the bundle, its weights and a vendored ``medxai``.

    Parameters
    ----------
    bundle_dir
        The bundle folder (``configs/metadata.json`` inside); its name names the archive and its top folder.
    output_dir
        Where the archive goes (created if missing); an existing archive of the same name is replaced.
    version
        The version to release, a key of the metadata ``changelog``; written into the packaged
        ``metadata.json``. Default: the metadata ``version``.
    allow_missing_weights
        Package without ``models/model.pt`` (a bundle that has to be trained first). Default: a missing
        checkpoint is an error naming its path.
    package_dir
        The ``medxai`` package folder to vendor. Default: the one this module was imported from.

    Returns
    -------
    Path
        The archive.
    """
    bundle = Path(bundle_dir).resolve()
    metadata = _read_metadata(bundle)
    version = bundle_version(bundle) if version is None else version
    changelog = metadata.get("changelog", {})
    if version not in changelog:
        raise ArchiveError(
            f"{bundle / METADATA}: version {version!r} has no 'changelog' entry (entries: {sorted(changelog)})"
        )
    name = archive_name(bundle.name, version)
    weights = bundle / WEIGHTS
    if not weights.is_file() and not allow_missing_weights:
        raise ArchiveError(
            f"no trained weights at {weights}: train the bundle first (monai.bundle run training ...), "
            "or package without weights explicitly (--allow_missing_weights)"
        )
    package = Path(package_dir) if package_dir is not None else Path(medxai.__file__).parent
    if not (package / "__init__.py").is_file():
        raise ArchiveError(f"{package} is not a Python package folder (no __init__.py)")

    members: dict[PurePosixPath, Path] = {}
    for part in BUNDLE_PARTS:
        for path in _walk(bundle / part):
            members[PurePosixPath(path.relative_to(bundle).as_posix())] = path
    if weights.is_file():
        members[WEIGHTS] = weights
    for path in _walk(package):
        members[PurePosixPath(PACKAGE) / path.relative_to(package).as_posix()] = path
    if METADATA not in members:
        raise ArchiveError(f"{bundle} has no {METADATA}")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / name
    partial = out / f".{name}.partial"
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname in sorted(members):
                data = members[arcname].read_bytes()
                if arcname == METADATA:
                    data = _packaged_metadata(metadata, version)
                _write_member(zf, f"{bundle.name}/{arcname}", data)
            if PACKAGED_DOC not in members:
                _write_member(zf, f"{bundle.name}/{PACKAGED_DOC}", RUN_DOCS.format(name=bundle.name).encode())
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)
    return archive


def extract_bundle(zip_path: str | Path, target_dir: str | Path) -> Path:
    """Extract a bundle archive into ``target_dir`` after checking every member; return the bundle folder.

    Nothing is written unless every member is a plain file or folder whose path stays inside ``target_dir``:
    absolute paths (``/x``, ``C:/x``), ``..`` components, symbolic links and other special files are refused,
    and so is a member that would overwrite an existing file.

    Returns
    -------
    Path
        ``target_dir/<bundle>`` when the archive holds one top-level folder (as :func:`package_bundle`
        writes), else ``target_dir``.

    Raises
    ------
    ArchiveError
        Naming the first offending member and why it is refused.
    """
    target = Path(target_dir).resolve()
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info, target, Path(zip_path))
        target.mkdir(parents=True, exist_ok=True)
        zf.extractall(target)
    tops = {PurePosixPath(info.filename.replace("\\", "/")).parts[0] for info in infos}
    if len(tops) == 1 and (target / next(iter(tops))).is_dir():
        return target / tops.pop()
    return target


@dataclass
class BundleRequirements:
    """What a bundle's configs pull in: ``medxai`` modules, and third-party distributions by import name.

    ``module_level`` maps distributions imported when a module is imported (needed by any run);
    ``lazy`` maps those imported inside functions or under ``try``/``except ImportError`` (needed by the
    code paths that call them). Values are the import names that led to the distribution.
    """

    modules: set[str] = field(default_factory=set)
    module_level: dict[str, set[str]] = field(default_factory=dict)
    lazy: dict[str, set[str]] = field(default_factory=dict)
    unresolved: set[str] = field(default_factory=set)


# MONAI components whose optional dependency a config needs by naming them
_COMPONENT_DISTRIBUTIONS = {
    "TensorBoardStatsHandler": "tensorboard",
    "TensorBoardImageHandler": "tensorboard",
    "ITKReader": "itk",
    "NibabelReader": "nibabel",
    "PydicomReader": "pydicom",
    "PILReader": "pillow",
}
_MEDXAI_NAME = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_]\w*)*")
_IMPORT_EXPR = re.compile(r"^\$\s*(?:import\s+([A-Za-z_]\w*)|from\s+([A-Za-z_]\w*)[\w.]*\s+import)")


def bundle_requirements(
    bundle_dir: str | Path, configs: Iterable[str] | None = None, package_dir: str | Path | None = None
) -> BundleRequirements:
    """The third-party distributions that the bundle's configs need, through ``medxai`` and directly.

    Reads every string of ``configs/*.json`` (or the given config names): ``medxai.<module>...`` names, with
    every module each imports transitively (parent packages included, as Python imports them), and
    ``$import``/``$from`` expressions; MONAI components with an optional dependency (TensorBoard handlers,
    ITK/nibabel/pydicom/PIL readers) add theirs: at module level when a config names them, deferred when
    ``medxai`` code does (MONAI imports the package at first use). A ``medxai`` module reached only through
    deferred imports contributes deferred requirements. Import names are mapped to distributions with
    :func:`importlib.metadata.packages_distributions`; the standard library is left out.
    """
    bundle = Path(bundle_dir)
    package = Path(package_dir) if package_dir is not None else Path(medxai.__file__).parent
    names = sorted(p.name for p in (bundle / "configs").glob("*.json")) if configs is None else list(configs)
    module_level: set[str] = set()
    referenced: set[str] = set()
    for config in names:
        if config == METADATA.name:
            continue
        for text in _strings(json.loads((bundle / "configs" / config).read_text())):
            referenced.update(_MEDXAI_NAME.findall(text))
            match = _IMPORT_EXPR.match(text)
            if match:
                module_level.add(match.group(1) or match.group(2))
            module_level.update(dist for comp, dist in _COMPONENT_DISTRIBUTIONS.items() if comp in text)
    roots = {m for m in (_module_of(name, package) for name in referenced) if m is not None}
    eager = _closure(roots, package, deferred=False)
    later = _closure({m for e in eager for m in _analyse_module(e, package).deferred_modules}, package, True)
    lazy: set[str] = set()
    for module in eager | later:
        info = _analyse_module(module, package)
        (module_level if module in eager else lazy).update(info.top)
        lazy.update(info.deferred)
        lazy.update(info.components)  # a MONAI reader named in medxai code imports its package at first use
    requirements = BundleRequirements(modules=eager | later)
    known = _packages_distributions()
    for imports, into in ((module_level, requirements.module_level), (lazy - module_level, requirements.lazy)):
        for name in imports - {PACKAGE, "__future__"}:
            if name in sys.stdlib_module_names:
                continue
            dists = [name] if name in _COMPONENT_DISTRIBUTIONS.values() else known.get(name, [])
            if not dists:
                requirements.unresolved.add(name)
            for dist in dists:
                into.setdefault(_canonical(dist), set()).add(name)
    for dist in set(requirements.lazy) & set(requirements.module_level):
        requirements.module_level[dist] |= requirements.lazy.pop(dist)
    return requirements


def _read_metadata(bundle: Path) -> dict[str, Any]:
    path = bundle / METADATA
    if not path.is_file():
        raise ArchiveError(f"{path} not found: {bundle} is not a bundle folder")
    metadata = json.loads(path.read_text())
    if not isinstance(metadata, dict):
        raise ArchiveError(f"{path} holds a {type(metadata).__name__}, not an object")
    return metadata


def _packaged_metadata(metadata: dict[str, Any], version: str) -> bytes:
    """The metadata as packaged: ``version`` set, and the vendored medxai no longer a required package."""
    packaged = dict(metadata, version=version)
    required = dict(packaged.get("required_packages_version", {}))
    required.pop(SELF_DISTRIBUTION, None)
    packaged["required_packages_version"] = required
    return (json.dumps(packaged, indent=4) + "\n").encode()


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself), sorted, without caches, compiled files and hidden entries."""
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_NAMES or p.startswith(".") for p in rel) or path.suffix in _SKIP_SUFFIXES:
            continue
        if path.is_symlink():
            raise ArchiveError(f"{path} is a symbolic link; packaged bundles hold plain files only")
        if path.is_file():
            yield path


def _write_member(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(info, data)


def _check_member(info: zipfile.ZipInfo, target: Path, archive: Path) -> None:
    name = info.filename
    where = f"{archive}: member {name!r}"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{where} is a symbolic link; refusing to extract links")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded (a plain member)
        raise ArchiveError(f"{where} is not a plain file or folder (mode {oct(mode)})")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise ArchiveError(f"{where} has an absolute path; refusing to write outside {target}")
    if ".." in posix.split("/"):
        raise ArchiveError(f"{where} has a '..' component; refusing to write outside {target}")
    destination = (target / posix).resolve()
    if not destination.is_relative_to(target):
        raise ArchiveError(f"{where} resolves to {destination}, outside {target}")
    if not info.is_dir() and (destination.exists() or destination.is_symlink()):
        raise ArchiveError(f"{where} would overwrite the existing {destination}")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _module_file(module: str, package: Path) -> Path | None:
    base = package.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_of(name: str, package: Path) -> str | None:
    """The longest importable module prefix of a dotted ``medxai...`` name (the rest are attributes)."""
    parts = name.split(".")
    while parts:
        if _module_file(".".join(parts), package) is not None:
            return ".".join(parts)
        parts.pop()
    return None


class _ModuleInfo(NamedTuple):
    """What one ``medxai`` module imports: ``medxai`` modules and third-party top-level names, at module level
    or deferred, and the MONAI components with optional dependencies it names (as distributions)."""

    modules: frozenset[str]
    deferred_modules: frozenset[str]
    top: frozenset[str]
    deferred: frozenset[str]
    components: frozenset[str]


def _analyse_module(module: str, package: Path) -> _ModuleInfo:
    path = _module_file(module, package)
    if path is None:
        raise ArchiveError(f"module {module!r} not found under {package.parent}")
    return _analyse_file(module, str(path), path.stat().st_mtime_ns, str(package))


@functools.lru_cache(maxsize=None)
def _analyse_file(module: str, path: str, mtime_ns: int, package: str) -> _ModuleInfo:
    source = Path(path).read_text()
    tree = ast.parse(source, path)
    is_package = Path(path).name == "__init__.py"
    found: dict[bool, set[str]] = {False: set(), True: set()}
    names: dict[bool, set[str]] = {False: set(), True: set()}

    def visit(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _imported_modules(node, module, is_package):
                top = name.split(".")[0]
                if top == PACKAGE:
                    resolved = _module_of(name, Path(package))
                    if resolved is not None:
                        found[deferred].add(resolved)
                elif top:
                    names[deferred].add(top)
        for child in ast.iter_child_nodes(node):
            visit(child, deferred or _defers(node))

    visit(tree, False)
    components = frozenset(dist for comp, dist in _COMPONENT_DISTRIBUTIONS.items() if comp in source)
    return _ModuleInfo(
        frozenset(found[False]), frozenset(found[True] - found[False]), frozenset(names[False]),
        frozenset(names[True] - names[False]), components,
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _closure(modules: set[str], package: Path, deferred: bool) -> set[str]:
    """``modules``, their parent packages and the ``medxai`` modules they import at module level, transitively
    (with ``deferred``, also the ones they import inside functions)."""
    done: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        info = _analyse_module(module, package)
        todo.extend(info.modules | (info.deferred_modules if deferred else frozenset()))
    return done


def _imported_modules(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names an import node may import (for ``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        return [source] + [f"{source}.{alias.name}" for alias in node.names]
    return []


def _defers(node: ast.AST) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return True
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        return True
    if isinstance(node, ast.Try):
        caught = " ".join(ast.unparse(h.type) for h in node.handlers if h.type is not None)
        return "ImportError" in caught or "ModuleNotFoundError" in caught
    return False


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()
