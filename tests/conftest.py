"""Shared fixtures: a tiny random BERT (fast, offline), synthetic data, study files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from harness.encoders.load import resolve_encoder_path

#: the PostgreSQL server the scale-out, chaos and read-only tests use (trust auth)
POSTGRES = os.environ.get("HARNESS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def throwaway_databases(*roles: str) -> Iterator[dict[str, str]]:
    """Fresh PostgreSQL databases, one per role (``{role: URL}``), dropped afterwards even
    if their users still hold connections; a server that does not answer fails the test."""
    import uuid

    import psycopg2

    try:
        admin = psycopg2.connect(POSTGRES, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES} (set HARNESS_TEST_POSTGRES): {exc}")
    admin.autocommit = True
    run = uuid.uuid4().hex[:10]
    names = {role: f"harness_test_{run}_{role}" for role in roles}
    server = POSTGRES.rsplit("/", 1)[0]
    try:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'CREATE DATABASE "{name}"')
        yield {role: f"{server}/{name}" for role, name in names.items()}
    finally:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def table_count(url: str) -> int:
    """Tables in the public schema of a PostgreSQL database."""
    import psycopg2

    with psycopg2.connect(url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        count = cur.fetchone()[0]
    conn.close()
    return count


def wait_until_healthy(url: str, proc, timeout: float) -> bool:
    """Poll ``url/health`` until it answers 200 (True), or ``proc`` exits or ``timeout``
    seconds pass (False): MLflow servers take from seconds to a minute to start."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


@pytest.fixture
def one_thread():
    """Tiny models: a second OpenMP thread only adds waiting (see harness/core/runtime.py)."""
    from harness.core.runtime import num_threads

    with num_threads(1):
        yield


# The README and CI give HARNESS_DATA_DIR relative to the project (../shared/data); tests
# run subprocesses in temporary folders, so make it absolute once, for all of them.
if os.environ.get("HARNESS_DATA_DIR"):
    os.environ["HARNESS_DATA_DIR"] = str(Path(os.environ["HARNESS_DATA_DIR"]).resolve())


@pytest.fixture(scope="session")
def babe_dir() -> Path:
    """BABE is required, not optional: CI sets HARNESS_DATA_DIR=../shared/data."""
    data_dir = os.environ.get("HARNESS_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "babe" / "final_labels_SG2.csv").is_file():
        pytest.fail("set HARNESS_DATA_DIR to the folder holding babe/final_labels_SG2.csv")
    return Path(data_dir)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 4-head BERT with MiniLM's tokenizer, saved to disk."""
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    minilm = resolve_encoder_path("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, path / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


WORDS_POS = ["outrageous", "disgraceful", "radical", "shameful", "scandal", "absurd"]
WORDS_NEG = ["reported", "announced", "stated", "according", "said", "noted"]


def write_synthetic_csv(path: Path, n: int = 160, seed: int = 0) -> Path:
    """A csv whose label is readable from its words (so readers can learn something),
    with varied lengths and an article-like group column."""
    rng = np.random.default_rng(seed)
    filler = "the a of officials on city plan new week after".split()
    lines = ["text,label,group"]
    for i in range(n):
        label = i % 2
        cue = rng.choice(WORDS_POS if label else WORDS_NEG)
        words = list(rng.choice(filler, size=int(rng.integers(3, 25))))
        words.insert(int(rng.integers(0, len(words))), str(cue))
        lines.append(f"{' '.join(words)},{label},g{i // 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def synthetic_csv(tmp_path) -> Path:
    return write_synthetic_csv(tmp_path / "synthetic.csv")


def study_yaml(
    tmp_path: Path,
    *,
    name: str = "t",
    dataset: str,
    encoder: str,
    n_trials: int = 2,
    epochs: int = 2,
    extra: str = "",
    search: str | None = None,
) -> Path:
    """A study file whose stores all live under ``tmp_path``."""
    search = search or textwrap.dedent(
        """\
        search:
          layers: [[0, 1], [1]]
          heads: [all, [0, 2]]
          reducer: [sum, max]
          classifier:
            gru: {hidden_size: 16, bidirectional: [true, false]}
            transformer: {hidden_size: 16, num_heads: 2, ff_size: 32}
        """
    )
    text = textwrap.dedent(
        f"""\
        name: {name}
        data: {{dataset: "{dataset}", group_column: group}}
        encoder: {{name: "{encoder}", max_len: 32, batch_size: 16}}
        train: {{epochs: {epochs}, patience: 2, batch_size: 16}}
        bootstrap: {{n_resamples: 200}}
        n_trials: {n_trials}
        storage: "sqlite:///{tmp_path}/optuna.db"
        tracking_uri: "sqlite:///{tmp_path}/mlflow.db"
        artifact_location: "{tmp_path}/artifacts"
        cache_dir: "{tmp_path}/cache"
        """
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + extra + search)
    return path


def serve_and_predict(
    model_uri: str, tracking_uri: str, texts: list[str], env: dict[str, str] | None = None
) -> np.ndarray:
    """Serve ``model_uri`` with the real ``mlflow models serve`` (local env, 127.0.0.1)
    and score ``texts`` over HTTP; the server is stopped however this ends."""
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    # the server runs ``uvicorn`` by name: the environment's bin folder must be on PATH
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    cmd = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path, **(env or {})},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    answer: dict = {}
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, "the server exited early"
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}
        request = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode()
    assert "predictions" in answer, stderr[-2000:]
    return np.ravel(answer["predictions"]).astype(np.float64)
