"""The ``harness`` command: the parser (``parser``), command bodies (``commands``), the
servers (``serve``) and the worker process (``worker``, ``python -m harness.cli.worker``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "parser": ["main"],
    },
)
