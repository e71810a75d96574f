"""Study-file parsing: the spellings a study may use, and errors that cite line and key."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import optuna
import pytest

from harness.core.errors import HarnessError
from harness.encoders.load import check_encoder
from harness.study.search import make_pruner, suggest
from harness.studyfile.schema import StudyConfig, parse_study
from harness.studyfile.space import Range, SearchConfig
from harness.studyfile.urls import validate_storage_url, validate_tracking_uri


def study(search: str = "", top: str = "") -> str:
    """Study text: ``top`` keys after the name, then a search block whose keys default to
    a valid minimum; ``search`` lines (two-space indented) replace or add keys."""
    keys = {"layers": "[0, 1]", "classifier": "{gru: {}}"}
    for line in textwrap.dedent(search).splitlines():
        key, _, value = line.partition(":")
        keys[key.strip()] = value.strip()
    body = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    return f"name: t\n{textwrap.dedent(top)}search:\n{body}"


def error(text: str) -> str:
    with pytest.raises(HarnessError) as info:
        parse_study(text, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


# --- valid spellings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("layers: [3, 4, 5]", [(3, 4, 5)]),
        ("layers: 5", [(5,)]),
        ("layers: [[3, 4, 5], [5]]", [(3, 4, 5), (5,)]),
    ],
)
def test_layer_spellings(line, expected):
    config = parse_study(study(line))
    assert list(config.search.layers) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("heads: all", [None]),
        ("heads: 3", [(3,)]),
        ("heads: [0, 7]", [(0, 7)]),
        ("heads: [all, [0, 7], 3]", [None, (0, 7), (3,)]),
        ("heads: [all]", [None]),
    ],
)
def test_head_spellings(line, expected):
    assert list(parse_study(study(line)).search.heads) == expected


def test_heads_default_to_all():
    assert list(parse_study(study()).search.heads) == [None]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("reducer: max", "max"),
        ("reducer: [sum, mean]", ["sum", "mean"]),
        ("lr: 3.0e-3", 3.0e-3),
        ("lr: 1e-3", 1.0e-3),  # YAML 1.1 reads this as text; it is clearly a number
        ("lr: 1", 1.0),
        ("lr: [1.0e-3, 1.0e-2]", [1.0e-3, 1.0e-2]),
        ("lr: {low: 1.0e-4, high: 1.0e-2, log: true}", Range(low=1e-4, high=1e-2, log=True)),
        ("lr: {low: 0.001, high: 0.01, step: 0.001}", Range(low=1e-3, high=1e-2, step=1e-3)),
    ],
)
def test_dimension_spellings(line, expected):
    search = parse_study(study(line)).search
    name = line.split(":")[0]
    assert getattr(search, name) == expected
    assert type(getattr(search, name)) is type(expected)


@pytest.mark.parametrize(
    ("hparams", "expected"),
    [
        ("gru:", {"gru": {}}),
        ("gru: {}", {"gru": {}}),
        ("gru: {hidden_size: 64}", {"gru": {"hidden_size": 64}}),
        ("gru: {bidirectional: [true, false]}", {"gru": {"bidirectional": [True, False]}}),
        (
            "lstm: {pooling: [last, mean, attention]}",
            {"lstm": {"pooling": ["last", "mean", "attention"]}},
        ),
        ("gru: {dropout: 0}", {"gru": {"dropout": 0.0}}),
        (
            "gru: {hidden_size: {low: 16, high: 64, step: 16}}",
            {"gru": {"hidden_size": Range(low=16, high=64, step=16)}},
        ),
        (
            "transformer: {hidden_size: [32, 64], num_heads: [2, 4], ff_size: 64}",
            {"transformer": {"hidden_size": [32, 64], "num_heads": [2, 4], "ff_size": 64}},
        ),
        (
            "transformer: {hidden_size: {low: 32, high: 128, step: 32}, num_heads: 4}",
            {"transformer": {"hidden_size": Range(low=32, high=128, step=32), "num_heads": 4}},
        ),
    ],
)
def test_classifier_spellings(hparams, expected):
    text = f"name: t\nsearch:\n  layers: [0]\n  classifier:\n    {hparams}\n"
    assert parse_study(text).search.classifier == expected


def test_every_spelling_samples_in_optuna():
    """What the parser accepts, ``study.suggest`` can draw from."""
    config = parse_study(
        textwrap.dedent(
            """\
            name: t
            search:
              layers: [[0, 1], [1]]
              heads: [all, [0, 2], 3]
              reducer: [sum, concat]
              lr: {low: 1.0e-4, high: 1.0e-2, log: true}
              classifier:
                gru: {hidden_size: {low: 8, high: 32, step: 8}, bidirectional: [true, false]}
                transformer: {hidden_size: [16, 32], num_heads: 2, dropout: {low: 0, high: 0.5}}
            """
        )
    )
    trials = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        spec = suggest(trials.ask(), config.search)
        assert spec.features.layers in [(0, 1), (1,)]
        assert spec.features.heads in [None, (0, 2), (3,)]
        assert 1e-4 <= spec.lr <= 1e-2
        assert isinstance(spec.classifier.hidden_size, int)
        if spec.classifier.kind == "transformer":
            assert spec.classifier.hidden_size % spec.classifier.num_heads == 0


def test_defaults_and_top_level_sections():
    config = parse_study(
        study(top='data: {dataset: x.tsv, delimiter: "\\t"}\nsplit: {val: 0.2, test: 0.1}\n')
    )
    assert config.data.delimiter == "\t"
    assert config.split.val == 0.2
    assert config.encoder.name == "minilm" and config.n_trials == 20


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///mlruns/optuna.db",
        "sqlite:////abs/optuna.db",
        "journal:///x/optuna.log",
        "postgresql://user@host/db",
        "postgresql+psycopg2://u@h/db",
    ],
)
def test_storage_urls_accepted(url):
    assert validate_storage_url(url) == url


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///mlruns/mlflow.db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "databricks",
        "postgresql://user@host/db",
    ],
)
def test_tracking_uris_accepted(uri):
    assert validate_tracking_uri(uri) == uri


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("optuna.db", "is not a URL"),
        ("sqlite://optuna.db", "sqlite:/// followed by a file path"),
        ("sqlite:///", "sqlite:/// followed by a file path"),
        ("journal:", "names no file"),
    ],
)
def test_storage_urls_refused(url, phrase):
    with pytest.raises(ValueError, match=phrase):
        validate_storage_url(url)


@pytest.mark.parametrize(
    ("uri", "phrase"),
    [
        ("mlruns", "is not a URL"),
        ("file:///tmp/mlruns", "file store"),
        ("ftp://host/x", "unknown scheme 'ftp'"),
    ],
)
def test_tracking_uris_refused(uri, phrase, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match=phrase):
        validate_tracking_uri(uri)


# --- errors: line numbers -----------------------------------------------------------


def test_error_cites_file_line_and_key():
    text = "name: t\ntrain:\n  epochs: 0\n" + study().removeprefix("name: t\n")
    assert error(text).startswith("s.yaml:3: key 'train.epochs': must be greater than 0 (got 0)")


def test_error_in_a_list_item_cites_its_line():
    text = "name: t\nsearch:\n  layers:\n    - [0]\n    - [1, 1]\n  classifier: {gru: {}}\n"
    assert error(text).startswith("s.yaml:5: key 'search.layers[1]': layer 1 is listed twice")


def test_error_in_a_range_cites_the_bound():
    text = textwrap.dedent(
        """\
        name: t
        search:
          layers: [0]
          classifier:
            gru:
              hidden_size:
                low: 64
                high: 16
        """
    )
    assert error(text).startswith(
        "s.yaml:8: key 'search.classifier.gru.hidden_size.high': high 16 is below low 64"
    )


def test_yaml_syntax_error_cites_line_and_opening():
    text = "name: t\nsearch:\n  layers: [0, 1\n  classifier: {gru: {}}\n"
    message = error(text)
    assert message.startswith("s.yaml:4: YAML syntax error: ")
    assert "starts at line 3" in message


def test_duplicate_key_cites_both_lines():
    text = study(top="n_trials: 3\nn_trials: 4\n")
    assert error(text) == "s.yaml:3: key 'n_trials' appears twice (first at line 2); keep one"


def test_missing_key_has_no_line_but_names_the_key():
    assert error("name: t\n").startswith("s.yaml: key 'search': missing; add it")


def test_empty_and_non_mapping_files():
    assert "the study file is empty" in error("# nothing\n")
    assert "not a list" in error("- name: t\n")


# --- errors: nearest valid key or value ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            study(top="n_trial: 3\n"),
            "s.yaml:2: key 'n_trial': unknown key; did you mean 'n_trials'?",
        ),
        (
            study(top="encoder: {nmae: minilm}\n"),
            "s.yaml:2: key 'encoder.nmae': unknown key; did you mean 'encoder.name'?",
        ),
        (study("reducers: [sum]"), "did you mean 'search.reducer'?"),
        (
            study("lr: {low: 0.1, hihg: 1}"),
            "key 'search.lr.hihg': unknown range key (did you mean 'high'?)",
        ),
        (
            study("classifier: {gru: {}, lstn: {}}"),
            "unknown classifier kind (did you mean 'lstm'?)",
        ),
        (
            study("classifier: {gru: {hiden_size: 8}}"),
            "unknown hyperparameter (did you mean 'hidden_size'?)",
        ),
        (
            study("reducer: [sum, maxx]"),
            "key 'search.reducer[1]': unknown reducer 'maxx' (did you mean 'max'?)",
        ),
        (study("classifier: {gru: {pooling: avg}}"), "unknown pooling 'avg'"),
        (study("heads: alll"), "(did you mean 'all'?)"),
        (
            study("heads: [0, alll]"),
            "'alll' is not a head index (0, 1, 2, …) (did you mean 'all'?)",
        ),
        (study(top="sampler: {name: tp}\n"), "must be 'tpe' or 'random' (got 'tp')"),
        (
            "name: my study\n" + study().removeprefix("name: t\n"),
            "s.yaml:1: key 'name': 'my study' is not a valid study name (did you mean 'my-study'?)",
        ),
    ],
)
def test_suggestions(text, expected):
    assert expected in error(text)


def test_unknown_key_without_a_near_match_lists_the_valid_ones():
    assert "valid keys here: epochs, patience" in error(study(top="train: {zzz: 1}\n"))


# --- errors: values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("search", "phrase"),
    [
        ("layers: []", "give layer indices"),
        ("layers: [[0], []]", "key 'search.layers[1]': empty layer list"),
        ("layers: [0, [1]]", "mixes indices and lists"),
        ("layers: [-1]", "-1 is not a layer index"),
        ("layers: [true]", "True is not a layer index"),
        ("layers: [[0], [0]]", "the choice [0] is listed twice"),
        ("heads: []", "key 'search.heads': empty head list"),
        ("heads: [all, []]", "key 'search.heads[1]': empty head list"),
        ("heads: some", "'some' is not 'all'"),
        ("heads: 1.5", "1.5 is not 'all'"),
        ("heads: {a: 1}", "is not 'all'"),
        ("reducer: []", "empty list of choices"),
        ("reducer: {low: 1, high: 2}", "reducer takes a value or a list of choices, not a range"),
        ("reducer: [sum, sum]", "the choice 'sum' is listed twice"),
        ("lr:", "has no value"),
        ("lr: 0", "lr must be positive, got 0"),
        ("lr: fast", "'fast' is not a finite number"),
        ("lr: .nan", "nan is not a finite number"),
        ("lr: {low: 0.1}", "a range needs low and high"),
        ("lr: {low: -1, high: 1}", "key 'search.lr.low': lr must be positive"),
        ("lr: {low: 0.001, high: 1, log: true, step: 0.1}", "cannot have a step"),
        ("lr: {low: 0.001, high: 1, log: yes please}", "is not true or false"),
        ("classifier: {}", "no classifier kind"),
        ("classifier: [gru]", "key 'search.classifier': must be a mapping"),
        ("classifier: {gru: [1]}", "is not a mapping of hyperparameters"),
        ("classifier: {gru: {hidden_size: []}}", "empty list of choices"),
        ("classifier: {gru: {hidden_size: 0}}", "hidden_size must be positive, got 0"),
        ("classifier: {gru: {hidden_size: true}}", "True is not a whole number"),
        ("classifier: {gru: {hidden_size: {low: 8.5, high: 16}}}", "8.5 is not a whole number"),
        (
            "classifier: {gru: {hidden_size: {low: 8, high: 16, step: 0}}}",
            "step must be a positive",
        ),
        ("classifier: {gru: {dropout: 1}}", "dropout must be in [0, 1)"),
        ("classifier: {gru: {dropout: {low: 0, high: 0.5, log: true}}}", "needs low > 0"),
        ("classifier: {gru: {bidirectional: yes please}}", "is not true or false"),
        ("classifier: {gru: {bidirectional: {low: 0, high: 1}}}", "not a range"),
        ("classifier: {gru: {num_heads: 2}}", "num_heads applies to transformer only"),
        ("classifier: {transformer: {bidirectional: true}}", "applies to gru, lstm only"),
        (
            "classifier: {transformer: {hidden_size: 30}}",
            "hidden_size 30 is not divisible by num_heads 4",
        ),
        (
            "classifier: {transformer: {hidden_size: 64, num_heads: [4, 6]}}",
            "hidden_size 64 is not divisible by num_heads 6",
        ),
        (
            "classifier: {transformer: {hidden_size: {low: 32, high: 64, step: 8}, num_heads: 16}}",
            "hidden_size 40 is not divisible by num_heads 16",
        ),
        (
            "classifier: {transformer: {hidden_size: 64, num_heads: {low: 2, high: 4}}}",
            "hidden_size 64 is not divisible by num_heads 3",
        ),
    ],
)
def test_search_value_errors(search, phrase):
    assert phrase in error(study(search))


@pytest.mark.parametrize(
    ("top", "phrase"),
    [
        ("n_trials: many\n", "key 'n_trials': must be a valid integer"),
        ("n_trials: 0\n", "must be greater than 0 (got 0); the default is 20"),
        ("timeout: -1\n", "remove the key to leave it unset"),
        ("train: {epochs: 0}\n", "key 'train.epochs': must be greater than 0"),
        ("train: {bucketing: maybe}\n", "must be a valid boolean"),
        ("data: babe\n", "key 'data': must be a mapping"),
        ("data: {max_rows: 1}\n", "greater than or equal to 2"),
        ("data: {delimiter: ';;'}\n", "a delimiter is one character"),
        ("data: {delimiter: '\\t'}\n", 'write delimiter: "\\t" in double quotes'),
        ("split: {val: 1.5}\n", "key 'split.val': must be less than 1"),
        ("split: {val: 0.6, test: 0.4}\n", "val + test = 1 leaves no training rows"),
        ("encoder: {max_len: 1000}\n", "key 'encoder.max_len'"),
        ("storage: optuna.db\n", "key 'storage': storage 'optuna.db' is not a URL"),
        ("tracking_uri: mlruns\n", "key 'tracking_uri': tracking URI 'mlruns' is not a URL"),
        ("name: ../up\n", "is not a valid study name"),
        ("pruner: {name: hyperband, n_warmup_steps: 2}\n", "the hyperband pruner does not read"),
        ("pruner: {name: median, percentile: 10}\n", "the median pruner does not read percentile"),
        ("pruner: {name: percentile, percentile: 100}\n", "must be less than 100"),
        ("pruner: {name: successive_halving, reduction_factor: 1}\n", "greater than or equal"),
        ("pruner: {name: asha}\n", "key 'pruner.name'"),
        ("name: ''\n", "is not a valid study name"),
    ],
)
def test_top_level_value_errors(top, phrase):
    text = study(top=top)
    if top.startswith("name:"):
        text = text.replace("name: t\n", "", 1)
    assert phrase in error(text)


@pytest.mark.parametrize(
    ("line", "pruner_type", "settings"),
    [
        ("{name: none}", optuna.pruners.NopPruner, {}),
        ("{name: none, n_warmup_steps: 2}", optuna.pruners.NopPruner, {}),
        (
            "{name: median, n_startup_trials: 4, n_warmup_steps: 0}",
            optuna.pruners.MedianPruner,
            {"_n_startup_trials": 4, "_n_warmup_steps": 0, "_percentile": 50.0},
        ),
        (
            "{name: percentile, percentile: 30}",
            optuna.pruners.PercentilePruner,
            {"_percentile": 30.0, "_n_startup_trials": 3, "_n_warmup_steps": 1},
        ),
        (
            "{name: successive_halving, min_resource: 2, reduction_factor: 2}",
            optuna.pruners.SuccessiveHalvingPruner,
            {"_min_resource": 2, "_reduction_factor": 2},
        ),
        (
            "{name: hyperband, reduction_factor: 2}",
            optuna.pruners.HyperbandPruner,
            {"_min_resource": 1, "_max_resource": 7, "_reduction_factor": 2},
        ),
    ],
)
def test_each_pruner_is_built_with_its_settings(line, pruner_type, settings):
    """Steps are epochs: hyperband's largest budget is the study's train.epochs."""
    config = parse_study(study(top=f"train: {{epochs: 7}}\npruner: {line}\n"))
    pruner = make_pruner(config)
    assert type(pruner) is pruner_type
    assert {k: getattr(pruner, k) for k in settings} == settings


def test_programmatic_configs_are_checked_too():
    """Notebook users building a ``SearchConfig`` get the same messages (no line)."""
    with pytest.raises(HarnessError, match=r"^key 'search.heads': empty head list"):
        SearchConfig(layers=[0], heads=[], classifier={"gru": {}})


# --- checks against the chosen encoder ----------------------------------------------


def fake_encoder(layers: int = 6, heads: int = 12, positions: int = 512) -> SimpleNamespace:
    return SimpleNamespace(
        name="minilm",
        num_layers=layers,
        num_heads=heads,
        config=SimpleNamespace(max_position_embeddings=positions),
    )


def test_encoder_fit_passes():
    config = parse_study(study("layers: [[3, 4, 5], [5]]\nheads: [all, [0, 11]]"), "s.yaml")
    check_encoder(config, fake_encoder())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            study("layers: [6, 7, 8]"),
            "s.yaml:3: key 'search.layers': layer(s) [6, 7, 8] out of range for encoder 'minilm', "
            "which has 6 layers; use indices 0..5",
        ),
        (
            study("heads: [all, [0, 12]]"),
            "s.yaml:5: key 'search.heads': head(s) [12] out of range for encoder 'minilm', which "
            "has 12 heads per layer; use indices 0..11 or 'all'",
        ),
        (
            study(top="encoder: {max_len: 400}\n"),
            "s.yaml:2: key 'encoder.max_len': 400 exceeds the 256 positions encoder 'minilm' can "
            "read; use max_len <= 256",
        ),
    ],
)
def test_encoder_fit_errors_cite_line(text, message):
    config = parse_study(text, "s.yaml")
    with pytest.raises(HarnessError) as info:
        check_encoder(config, fake_encoder(positions=256))
    assert str(info.value) == message


def test_encoder_fit_on_a_programmatic_config_names_the_key():
    config = StudyConfig(name="t", search={"layers": [9], "classifier": {"gru": {}}})
    with pytest.raises(HarnessError, match=r"^<config>: key 'search.layers': layer\(s\) \[9\]"):
        check_encoder(config, fake_encoder())


def test_encoder_fit_with_a_real_encoder(tiny_bert):
    """The check reads what ``harness.encoders.load.Encoder`` provides (2 layers, 4 heads, 128
    positions for the tiny BERT)."""
    from harness.encoders.load import load_encoder

    encoder = load_encoder(str(tiny_bert))
    check_encoder(parse_study(study("layers: [0, 1]\nheads: [3]")), encoder)
    with pytest.raises(HarnessError, match=r"s.yaml:2: key 'encoder.max_len': 200 exceeds the 128"):
        check_encoder(parse_study(study(top="encoder: {max_len: 200}\n"), "s.yaml"), encoder)
