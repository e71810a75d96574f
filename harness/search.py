"""Study config -> Optuna: draw a ``TrialSpec`` from the search space; sampler and pruner.

Kind-specific hyperparameters are named ``kind.name`` in Optuna so that each kind keeps
its own distributions, and logged to MLflow under their study-file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from harness.config import StudyConfig
from harness.features import FeatureSpec
from harness.models.reader import HPARAMS, ClassifierSpec
from harness.space import Range, SearchConfig


@dataclass(frozen=True)
class TrialSpec:
    """What one trial trains: the features, the reader, and its learning rate."""

    features: FeatureSpec
    classifier: ClassifierSpec
    lr: float
    #: classifier hyperparameters named in the study file (logged under those names)
    hparams: tuple[str, ...] = ()

    def params(self) -> dict[str, str]:
        params = {
            "layers": self.features.layers_param,
            "heads": self.features.heads_param,
            "reducer": self.features.reducer,
            "classifier": self.classifier.kind,
            "lr": repr(self.lr),
        }
        params.update({h: str(getattr(self.classifier, h)) for h in self.hparams})
        return params


def _suggest(trial: optuna.Trial, name: str, dim: Any, kind: type = float) -> Any:
    """One search dimension: a range, a list of choices, or a fixed value."""
    if isinstance(dim, Range):
        if kind is int:
            step = int(dim.step or 1)
            return trial.suggest_int(name, int(dim.low), int(dim.high), step=step, log=dim.log)
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
    options = list(dim) if isinstance(dim, list | tuple) else [dim]
    return options[0] if len(options) == 1 else trial.suggest_categorical(name, options)


def suggest(trial: optuna.Trial, search: SearchConfig) -> TrialSpec:
    """Sample a ``TrialSpec``; layer and head choices are drawn by their MLflow spelling
    (``3,4,5``, ``all``), which Optuna can store as a categorical."""
    layers_by_name = {",".join(map(str, c)): c for c in search.layers}
    layers = layers_by_name[_suggest(trial, "layers", list(layers_by_name))]
    heads_by_name = {"all" if h is None else ",".join(map(str, h)): h for h in search.heads}
    heads = heads_by_name[_suggest(trial, "heads", list(heads_by_name))]
    reducer = _suggest(trial, "reducer", search.reducer, str)
    lr = float(_suggest(trial, "lr", search.lr, float))
    kind = _suggest(trial, "classifier", list(search.classifier), str)
    hparams = search.classifier[kind] or {}
    values = {h: _suggest(trial, f"{kind}.{h}", d, HPARAMS[h]) for h, d in hparams.items()}
    return TrialSpec(
        FeatureSpec(layers, heads, reducer),
        ClassifierSpec(kind=kind, **values),
        lr,
        tuple(hparams),
    )


def make_sampler(config: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    """Seeded with the study's seed plus ``offset`` (the trial number)."""
    seed = config.sampler.seed + offset
    if config.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.sampler.n_startup_trials)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Steps are epochs (each trial reports its validation AUC once per epoch)."""
    p = config.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(p.n_startup_trials, p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, p.n_startup_trials, p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(p.min_resource, p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            p.min_resource, config.train.epochs, p.reduction_factor
        )
    return optuna.pruners.NopPruner()
