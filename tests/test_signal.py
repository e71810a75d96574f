"""Issue #9: per-map selection, stack, position-free views in studies, probes, head sweep."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.attention.extract import extract_attention
from harness.core.errors import HarnessError
from harness.encoders.load import load_encoder
from harness.study.study import run_study
from harness.studyfile.schema import parse_study
from harness.studyfile.space import Top
from harness.studyfile.specs import FeatureSpec, parse_heads
from tests.conftest import study_yaml, write_synthetic_csv

TEXTS = [
    "the senator's outrageous scheme was announced",
    "officials said the plan passed on tuesday after a long week",
    "a radical and shameful proposal",
    "the city reported new figures",
]


@pytest.fixture(scope="module")
def tiny_cache(tiny_bert, tmp_path_factory):
    """2 layers × 4 heads of a random tiny BERT over four sentences."""
    encoder = load_encoder(str(tiny_bert))
    cache_dir = tmp_path_factory.mktemp("cache")
    return extract_attention(encoder, TEXTS, max_len=32, cache_dir=cache_dir, progress=False)


def test_per_map_selection_reads_exactly_the_named_maps(tiny_cache):
    """Rows view, ``stack`` over L1H2 then L0H3: each sentence's channels are exactly those
    two maps, in that order, zero past the sentence."""
    x, lengths = tiny_cache.features(heads="L1H2,L0H3", reducer="stack")
    width = tiny_cache.max_len
    assert x.shape == (len(TEXTS), width, 2 * width)
    for i in range(len(TEXTS)):
        n, maps = int(lengths[i]), tiny_cache.maps(i).astype(np.float32)
        np.testing.assert_array_equal(x[i, :n, :n], maps[1, 2])
        np.testing.assert_array_equal(x[i, :n, width : width + n], maps[0, 3])
        assert not x[i, n:].any() and not x[i, :n, n:width].any()


def test_per_map_sum_equals_the_two_maps_added(tiny_cache):
    x, lengths = tiny_cache.features(heads=[(1, 2), (0, 3)], reducer="sum")
    for i in range(len(TEXTS)):
        n, maps = int(lengths[i]), tiny_cache.maps(i).astype(np.float32)
        np.testing.assert_allclose(x[i, :n, :n], maps[1, 2] + maps[0, 3], rtol=1e-6)


def test_view_features_of_named_maps_through_the_cache(tiny_cache):
    """The stats view of two maps, stacked: the first 7 features are map L1H2's, the next
    7 map L0H3's (checked against the attention of sentence 0 by hand: [CLS] column)."""
    x, lengths = tiny_cache.features(heads="L1H2,L0H3", reducer="stack", view="stats")
    assert x.shape == (len(TEXTS), tiny_cache.max_len, 14)
    n, maps = int(lengths[0]), tiny_cache.maps(0).astype(np.float32)
    np.testing.assert_allclose(x[0, :n, 0], maps[1, 2][:, 0], atol=1e-3)  # to [CLS]
    np.testing.assert_allclose(x[0, :n, 7], maps[0, 3][:, 0], atol=1e-3)
    np.testing.assert_allclose(x[0, :n, 8], maps[0, 3][:, n - 1], atol=1e-3)  # to [SEP]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("all", None),
        ("0,3", (0, 3)),
        ("L5H6,L1H10", ((5, 6), (1, 10))),
        (["L5H6", "L1H10"], ((5, 6), (1, 10))),
    ],
)
def test_head_spellings(text, expected):
    assert parse_heads(text) == expected


def test_feature_spec_of_maps_round_trips_and_sizes():
    spec = FeatureSpec.of_maps(((5, 6), (1, 10)), "stack", "relative")
    assert spec.layers == (5, 1)
    assert spec.input_size(80) == 22
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.heads_param == "L5H6,L1H10"
    assert FeatureSpec((0, 1), None, "stack", "stats").input_size(80, num_heads=12) == 168
    with pytest.raises(HarnessError, match="concat .* rows view only"):
        FeatureSpec((0,), None, "concat", "stats")


def _search(body: str) -> str:
    return "name: t\nsearch:\n  layers: [0, 1]\n  classifier: {linear: {}}\n" + textwrap.indent(
        textwrap.dedent(body), "  "
    )


def test_study_file_head_and_view_forms():
    config = parse_study(
        _search(
            """\
            heads: [all, [0, 2], [L1H3, L0H0], {1: [2], 0: [3]}, {top: 4}]
            view: {rows: {reducer: [sum, max]}, stats: {reducer: stack}, relative: null}
            """
        )
    )
    assert config.search.heads == (None, (0, 2), ((1, 3), (0, 0)), ((1, 2), (0, 3)), Top(4))
    assert config.search.view == {"rows": ["sum", "max"], "stats": "stack", "relative": "stack"}
    tops = parse_study(_search("heads: {top: [1, 4, all]}\nview: [stats, rows]\n"))
    assert tops.search.heads == (Top(1), Top(4), None)
    assert tops.search.view == {"stats": "sum", "rows": "sum"}


@pytest.mark.parametrize(
    "body,phrase",
    [
        ("view: stat\n", "unknown view 'stat' (did you mean 'stats'?)"),
        ("view: stats\nreducer: concat\n", "concat lays absolute positions side by side"),
        ("view: {stats: {reducer: sum}}\nreducer: max\n", "remove this top-level reducer"),
        ("view: {stats: {reduce: sum}}\n", "a view takes only its reducer"),
        ("heads: {top: 0}\n", "top takes a number of maps >= 1"),
        ("heads: [L1H2, L1H2]\n", "listed twice"),
        ("heads: {x: [1]}\n", "'x' is not a layer index"),
        ("classifier: {linear: {c: 0}}\n", "c must be positive"),
        ("classifier: {linear: {hidden_size: 8}}\n", "hidden_size applies to"),
        ("classifier: {mlp: {c: 1.0}}\n", "c applies to linear only"),
    ],
)
def test_study_file_signal_errors(body, phrase):
    text = _search(body)
    if "classifier:" in body:
        text = text.replace("  classifier: {linear: {}}\n", "")
    with pytest.raises(HarnessError) as err:
        parse_study(text, "s.yaml")
    assert phrase in str(err.value)


def test_out_of_range_maps_are_refused_for_the_encoder(tiny_bert, tmp_path):
    data = write_synthetic_csv(tmp_path / "d.csv")
    path = study_yaml(
        tmp_path,
        dataset=str(data),
        encoder=str(tiny_bert),
        search="search:\n  layers: [0]\n  heads: [L2H1]\n  classifier: {linear: {}}\n",
    )
    with pytest.raises(HarnessError, match=r"map\(s\) L2H1 out of range"):
        run_study(path, progress=False)
    assert not (tmp_path / "optuna.db").exists()


SIGNAL_SEARCH = """\
search:
  layers: [[0, 1]]
  heads: [all, {top: 3}, [L1H2, L0H3]]
  view: {stats: {reducer: [stack, sum]}, relative: {reducer: stack}, rows: {reducer: sum}}
  classifier:
    linear: {c: {low: 0.01, high: 1.0, log: true}}
    mlp: {hidden_size: 8}
    gru: {hidden_size: 8}
"""


@pytest.fixture(scope="module")
def signal_study(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("signal")
    data = write_synthetic_csv(tmp / "data.csv", n=200)
    path = study_yaml(
        tmp,
        name="sig",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=8,
        extra="pruner: {name: none}\nsampler: {name: random, seed: 1}\n",
        search=SIGNAL_SEARCH,
    )
    summary = run_study(path, progress=False)
    return tmp, path, summary


def _children(tmp, role):
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("sig")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("harness.role") == role]


def test_the_head_sweep_is_logged_once_and_ranks_on_validation(signal_study):
    tmp, _, _ = signal_study
    client, sweeps = _children(tmp, "probe")
    assert len(sweeps) == 1
    run = sweeps[0]
    local = client.download_artifacts(run.info.run_id, "heads.csv", str(tmp))
    rows = list(csv.DictReader(open(local)))
    assert list(rows[0]) == [
        "layer",
        "head",
        "val_auc",
        "test_auc",
        "test_auc_ci_low",
        "test_auc_ci_high",
    ]
    assert len(rows) == 2 * 4  # every map of the tiny BERT
    for r in rows:
        assert float(r["test_auc_ci_low"]) <= float(r["test_auc"]) <= float(r["test_auc_ci_high"])
    best = max(rows, key=lambda r: float(r["val_auc"]))
    assert run.data.tags["harness.best_map"] == f"L{best['layer']}H{best['head']}"
    png = client.download_artifacts(run.info.run_id, "heads.png", str(tmp))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_top_k_trials_read_the_k_best_maps_by_validation(signal_study):
    tmp, _, _ = signal_study
    client, sweeps = _children(tmp, "probe")
    rows = list(
        csv.DictReader(
            open(client.download_artifacts(sweeps[0].info.run_id, "heads.csv", str(tmp / "h")))
        )
    )
    ranked = sorted(rows, key=lambda r: (-float(r["val_auc"]), int(r["layer"]), int(r["head"])))
    top3 = ",".join(f"L{r['layer']}H{r['head']}" for r in ranked[:3])
    _, trials = _children(tmp, "trial")
    tops = [t for t in trials if t.data.params["heads"] == "top3"]
    assert tops, "the random sampler with seed 1 draws top3 at least once"
    assert all(t.data.params["maps"] == top3 for t in tops)


def test_probe_and_reader_trials_reload_and_reproduce_their_predictions(signal_study):
    """Every complete trial (linear, mlp, gru; rows, stats, relative) reloads in a new
    process and reproduces its logged test probabilities from raw text."""
    tmp, _, _ = signal_study
    _, trials = _children(tmp, "trial")
    done = [t for t in trials if t.data.tags.get("optuna.state") == "COMPLETE"]
    kinds = {(t.data.params["classifier"], t.data.params.get("view", "rows")) for t in done}
    assert {k for k, _ in kinds} >= {"linear", "mlp", "gru"}, kinds
    script = textwrap.dedent(
        f"""
        import sys, harness
        from harness.tracking.runs import RunReader
        data = harness.load_dataset("{tmp}/data.csv", group_column="group")
        text = {{r: t for r, t in zip(data.row_ids, data.texts)}}
        uri = "sqlite:///{tmp}/mlflow.db"
        worst = 0.0
        for run_id in sys.argv[1:]:
            rows = RunReader(uri).predictions(run_id)
            run = harness.load_run(run_id, tracking_uri=uri)
            probs = run.predict_proba([text[int(r["row_id"])] for r in rows])
            worst = max(worst, max(abs(p - float(r["probability"])) for p, r in zip(probs, rows)))
        print(worst)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *(t.info.run_id for t in done)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


def test_harness_heads_prints_the_ranking_and_reuses_the_sweep(signal_study):
    tmp, path, _ = signal_study
    out = subprocess.run(
        [sys.executable, "-m", "harness", "heads", str(path), "--top", "3"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    assert len([line for line in lines[header + 1 :] if line.strip()[:1].isdigit()]) == 3
    assert "head-sweep" in out.stdout
    _, sweeps = _children(tmp, "probe")
    assert len(sweeps) == 1  # found again, not logged twice


def test_linear_probe_saves_and_loads_without_pickle(tmp_path):
    from harness.models.base import load_model
    from harness.models.inputs import AttentionInputs
    from harness.models.probe import LinearProbe
    from harness.studyfile.specs import ProbeSpec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 1, 5)).astype(np.float32)
    y = (x[:, 0, 0] + 0.3 * rng.normal(size=120) > 0).astype(np.int64)
    inputs = (x, np.ones(120, np.int64))
    spec = FeatureSpec.of_maps(((0, 1),), "stack", "stats")
    model = LinearProbe(
        ProbeSpec(kind="linear", c=0.5), AttentionInputs(spec, "e", "fp", 16, 4, pooled=True)
    )
    fit = model.fit(inputs, y, np.arange(80), np.arange(80, 120))
    assert fit.best_val_auc > 0.8
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    np.testing.assert_array_equal(again.predict_proba(inputs), model.predict_proba(inputs))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["kind"] == "linear" and config["inputs"]["pooled"] is True
