"""Score a file of sentences with a logged model: ``harness predict RUN --input FILE``.

Sentences go through the model in chunks, each batched and sorted by length inside the
encoder like attention extraction, so memory stays bounded however long the file is and
a progress bar can count sentences. The output is written to a temporary file and moved
into place at the end: an interrupted run leaves no half-written CSV.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.predict import LoadedRun

#: sentences per call of ``predict_proba``: enough to sort by length within, small enough
#: to keep the attention features of one chunk in memory
CHUNK = 1024
OUTPUT_HEADER = ("row_id", "probability", "text")


def check_output(path: Path) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if path.is_dir():
        raise HarnessError(f"--output {path} is a folder; give a file name such as scores.csv")
    if not path.parent.is_dir():
        raise HarnessError(f"--output {path}: folder {path.parent} does not exist; create it")


def predict_texts(
    run: LoadedRun, texts: list[str], chunk: int = CHUNK, progress: bool = True
) -> np.ndarray:
    """Positive-class probabilities of ``texts``, ``chunk`` sentences at a time."""
    out = np.empty(len(texts), dtype=np.float32)
    with tqdm(total=len(texts), unit="sentence", desc="predict", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            out[start : start + len(part)] = run.predict_proba(part)
            bar.update(len(part))
    return out


def write_scores(path: Path, row_ids: np.ndarray, probs: np.ndarray, texts: list[str]) -> None:
    """``row_id,probability,text``: ``row_id`` is the input file's 0-based data row."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(OUTPUT_HEADER)
            for row_id, p, text in zip(row_ids, probs, texts, strict=True):
                writer.writerow([int(row_id), f"{p:.8f}", text])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
