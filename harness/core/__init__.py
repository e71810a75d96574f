"""The harness's base: errors, runtime settings (logging, torch threads), files (locks,
writable checks, hashes) and batching. Imports nothing else of the harness.

It also holds ``attach``, the one form every package's ``__init__`` uses to name its
public API. Names load on first use, so ``harness --help``, ``study best`` or a probe's
``predict`` import only the modules they touch, never torch unless they need it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:  # one source: the package metadata (pyproject.toml)
    __version__ = version("harness")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"


def attach(
    package: str, exports: dict[str, list[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """A package's lazy public API: ``exports`` maps each private module to its public names.

    Returns ``(__getattr__, __dir__, __all__)`` for the package (PEP 562). A name is
    imported from its module on first access and then cached on the package.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)


__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "batching": ["make_batches"],
        "errors": ["EXIT_USER_ERROR", "HarnessError", "TrainingDiverged"],
        "fs": [
            "check_free_space",
            "check_writable_dir",
            "check_writable_file",
            "default_cache_dir",
            "os_reason",
            "sqlite_init_lock",
            "texts_sha256",
            "waiting_lock",
        ],
        "runtime": [
            "default_device",
            "extraction_threads",
            "num_threads",
            "setup_logging",
            "train_threads",
        ],
    },
)
__all__ += ["__version__", "attach"]
