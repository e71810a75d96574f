"""The model protocol's saved format: round trip, and refusal of formats and kinds this
harness does not know."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.models.base import FORMAT, Model, load_model
from harness.models.length import LengthModel


def fitted_length_model() -> tuple[LengthModel, list[str], np.ndarray]:
    texts = [" ".join(["word"] * n) for n in range(1, 41)]
    labels = (np.arange(40) >= 20).astype(np.int64)  # longer sentences are positive
    model = LengthModel(positive_label="1")
    idx = np.arange(40)
    result = model.fit(texts, labels, idx[::2], idx[1::2])
    assert result.best_val_auc == 1.0 and result.best_epoch == 0
    return model, texts, labels


def test_length_model_implements_the_protocol_and_round_trips(tmp_path):
    model, texts, _ = fitted_length_model()
    assert isinstance(model, Model)
    model.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["format"] == FORMAT and config["kind"] == "length"
    assert config["inputs"] == {"type": "text"} and "harness_version" in config
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    assert loaded.predict_proba(texts, np.array([0, 39])).tolist() == pytest.approx(
        model.predict_proba(texts)[[0, 39]].tolist()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 1}, "has format 1; this harness .* reads format 2 only"),
        ({"kind": "forest"}, "unknown kind 'forest'; this harness knows reader, length"),
    ],
)
def test_unknown_formats_and_kinds_are_refused(tmp_path, change, message):
    model, _, _ = fitted_length_model()
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(HarnessError, match=message):
        load_model(tmp_path)
