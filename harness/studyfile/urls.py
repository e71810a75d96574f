"""The two stores' addresses: the Optuna storage URL and the MLflow tracking URI, each
checked once, where it enters (study file, flag or environment), with one default each."""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.core import HarnessError

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"


_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str) -> str | None:
    """``postgresql+psycopg2://…`` -> ``postgresql``; ``None`` for what is not a URL."""
    match = _URL_SCHEME.match(url)
    return match.group(1).split("+")[0].lower() if match else None


def check_url(url: str, what: str, examples: str) -> None:
    """A URL at all, and a well-formed SQLite one (shared with ``harness.tracking.runs``)."""
    if url_scheme(url) is None:
        raise ValueError(f"{what} {url!r} is not a URL; use {examples}")
    if url.startswith("sqlite:") and (not url.startswith("sqlite:///") or url == "sqlite:///"):
        raise ValueError(
            f"{what} {url!r}: an SQLite URL is sqlite:/// followed by a file path, e.g. "
            "sqlite:///mlruns/x.db (relative) or sqlite:////abs/path/x.db"
        )


def validate_storage_url(url: str) -> str:
    """An Optuna storage URL the harness can open; raises ``ValueError`` saying what to write.

    Checked before any work so that a typo does not surface after the attention cache
    is built."""
    if url.startswith("journal:"):
        if not url.removeprefix("journal:").strip("/"):
            raise ValueError(
                f"storage {url!r} names no file; use e.g. journal:///mlruns/optuna.log"
            )
        return url
    check_url(
        url,
        "storage",
        "sqlite:///mlruns/optuna.db, journal:///mlruns/optuna.log or postgresql://user@host/db",
    )
    return url


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` with the driver the project installs (psycopg2): SQLAlchemy 2.1
    maps the bare scheme to psycopg 3, which is not a dependency."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def local_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` or ``journal:///`` URL, read like SQLAlchemy reads
    SQLite URLs: three slashes then a relative path, four for an absolute one."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme):
            return Path(url.removeprefix(scheme))
    return None


DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


#: tracking stores MLflow can open (SQLAlchemy dialects take a ``+driver`` suffix)
_TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def validate_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI the harness can open; raises ``ValueError`` saying what to write.

    A plain path would select MLflow's file store, which MLflow >= 3.7 refuses, and only
    after the attention cache was built."""
    examples = "sqlite:///mlruns/mlflow.db or http://host:5000"
    if uri == "databricks":
        return uri
    check_url(uri, "tracking URI", examples)
    scheme = url_scheme(uri)
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ValueError(
            f"tracking URI {uri!r} selects MLflow's file store, which MLflow no longer accepts; "
            f"use {examples}"
        )
    if scheme != "file" and scheme not in _TRACKING_SCHEMES:
        raise ValueError(
            f"tracking URI {uri!r} has an unknown scheme {scheme!r}; use {examples} "
            f"(schemes: {', '.join(_TRACKING_SCHEMES)})"
        )
    return uri


def default_tracking_uri(flag: str | None = None, configured: str | None = None) -> str:
    """The store a command uses: ``flag`` > ``$MLFLOW_TRACKING_URI`` > ``configured`` (a
    study file's) > ``DEFAULT_TRACKING_URI``. Flags and study files were checked when
    parsed; the environment's value is checked here."""
    if flag:
        return flag
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        try:
            return validate_tracking_uri(env)
        except ValueError as exc:
            raise HarnessError(f"MLFLOW_TRACKING_URI: {exc}") from None
    return configured or DEFAULT_TRACKING_URI


def is_local_store(tracking_uri: str) -> bool:
    """Local stores (sqlite, file) need an artifact location; servers choose their own."""
    return not tracking_uri.startswith(("http://", "https://", "databricks"))
