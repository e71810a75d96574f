"""What makes a run readable and repeatable in the MLflow UI: one-line descriptions, the
data set as an MLflow dataset input, and reproducibility tags.

MLflow shows ``mlflow.note.content`` as a run's (or experiment's) Description and dataset
inputs in the runs table's Dataset column; the version tags and the encoder fingerprint
say what produced a number long after the environment is gone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from contextlib import suppress
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag

from harness.core import __version__
from harness.data import Dataset, Split

DESCRIPTION_TAG = "mlflow.note.content"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
#: MLflow keeps at most this many characters of a dataset digest
_DIGEST_CHARS = 12
_KIND_LABELS = {"gru": "GRU", "lstm": "LSTM", "transformer": "Transformer"}
_VERSIONED = ("torch", "transformers", "mlflow", "optuna", "numpy")


def describe_model(params: dict[str, str]) -> str:
    """``GRU 32 over layers 4,5 (sum)`` for a reader; a baseline's ``model`` param else."""
    kind = params.get("classifier")
    if not kind:
        return params.get("model", "model")
    size = params.get("hidden_size")
    heads, reducer = params.get("heads", "all"), params.get("reducer")
    detail = reducer if heads == "all" else f"heads {heads}, {reducer}"
    label = _KIND_LABELS.get(kind, kind)
    name = f"{label} {size}" if size else label
    return f"{name} over layers {params.get('layers')} ({detail})"


def describe_run(params: dict[str, str], val_auc: float) -> str:
    """A run's one-line description: ``GRU 32 over layers 4,5 (sum) — val AUC 0.649``."""
    return f"{describe_model(params)} — val AUC {val_auc:.3f}"


def dataset_input(dataset: Dataset, split: Split) -> DatasetInput:
    """The study's data as an MLflow dataset input: name, sha256 digest (shortened as
    MLflow requires; the full hash is in the profile), source path, row counts per split."""
    profile = {
        "num_rows": len(dataset),
        "train_rows": len(split.train),
        "val_rows": len(split.val),
        "test_rows": len(split.test),
        "positive_label": dataset.positive_label,
        "sha256": dataset.sha256,
    }
    schema = {"mlflow_colspec": [{"type": "string", "name": "text", "required": True}]}
    entity = DatasetEntity(
        name=dataset.name,
        digest=dataset.sha256[:_DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": str(Path(dataset.source).resolve())}),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", "train,val,test")])


@cache
def _git_commit() -> str | None:
    """The commit of the checkout the harness runs from, if it is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@cache
def _versions() -> dict[str, str]:
    tags = {"harness.version": __version__, "python.version": platform.python_version()}
    for package in _VERSIONED:
        try:
            tags[f"{package}.version"] = version(package)
        except PackageNotFoundError:
            tags[f"{package}.version"] = "not installed"
    return tags


def _machine() -> dict[str, str]:
    """What a run's numbers depend on beyond the code: the CPU's kernels differ by model,
    and torch's reductions by thread count (docs/statistics.md, "Reproducibility")."""
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tags = {"harness.cpu": cpu, "harness.cpu_count": str(os.cpu_count())}
    torch = sys.modules.get("torch")  # never imported here just to ask
    if torch is not None:
        tags["harness.torch_threads"] = str(torch.get_num_threads())
    return tags


def provenance_tags(encoder_fingerprint: str) -> dict[str, str]:
    """Versions, the machine, the git commit (when the harness runs from a checkout) and
    the encoder's weight fingerprint."""
    tags = {**_versions(), **_machine(), "harness.encoder_fingerprint": encoder_fingerprint}
    commit = _git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags
