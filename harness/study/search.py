"""Study config -> Optuna: draw a ``TrialSpec`` from the search space; sampler and pruner.

Kind-specific hyperparameters are named ``kind.name`` in Optuna so that each kind keeps
its own distributions, and logged to MLflow under their study-file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from harness.studyfile import (
    HPARAMS,
    ClassifierSpec,
    FeatureSpec,
    Map,
    ProbeSpec,
    Range,
    SearchConfig,
    StudyConfig,
    Top,
    head_choice_name,
    is_pairs,
    make_spec,
)


@dataclass(frozen=True)
class TrialSpec:
    """What one trial trains: the features, the model, and its learning rate."""

    features: FeatureSpec
    classifier: ClassifierSpec | ProbeSpec
    lr: float
    #: classifier hyperparameters named in the study file (logged under those names)
    hparams: tuple[str, ...] = ()
    #: the head choice as drawn (``all``, ``0,7``, ``top8``); the maps it resolved to are
    #: logged as ``maps`` when they differ from it
    heads: str = "all"

    def params(self) -> dict[str, str]:
        params = {
            "layers": self.features.layers_param,
            "heads": self.heads,
            "reducer": self.features.reducer,
            "classifier": self.classifier.kind,
            "lr": repr(self.lr),
        }
        if self.features.view != "rows":
            params["view"] = self.features.view
        if self.heads != self.features.heads_param:
            params["maps"] = self.features.heads_param
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


def suggest(
    trial: optuna.Trial, search: SearchConfig, ranking: list[Map] | None = None
) -> TrialSpec:
    """Sample a ``TrialSpec``; layer and head choices are drawn by their MLflow spelling
    (``3,4,5``, ``all``, ``top8``), which Optuna can store as a categorical. ``ranking``
    is the head sweep's order of maps (best validation AUC first), for ``{top: k}``."""
    layers_by_name = {",".join(map(str, c)): c for c in search.layers}
    layers = layers_by_name[_suggest(trial, "layers", list(layers_by_name))]
    heads_by_name = {head_choice_name(h): h for h in search.heads}
    heads_name = _suggest(trial, "heads", list(heads_by_name))
    view = _suggest(trial, "view", list(search.view), str)
    # one shared reducer dimension keeps its plain name; per-view ones are named per view
    shared = len({repr(d) for d in search.view.values()}) == 1
    reducer = _suggest(trial, "reducer" if shared else f"{view}.reducer", search.view[view], str)
    lr = float(_suggest(trial, "lr", search.lr, float))
    kind = _suggest(trial, "classifier", list(search.classifier), str)
    hparams = search.classifier[kind] or {}
    values = {h: _suggest(trial, f"{kind}.{h}", d, HPARAMS[h]) for h, d in hparams.items()}
    features = _features(layers, heads_by_name[heads_name], reducer, view, ranking)
    return TrialSpec(features, make_spec(kind, values), lr, tuple(hparams), heads_name)


def _features(
    layers: tuple[int, ...], heads: Any, reducer: str, view: str, ranking: list[Map] | None
) -> FeatureSpec:
    """Explicit maps name their own layers; ``Top(k)`` takes the k best maps of the chosen
    layers, in ranking order (best first)."""
    if isinstance(heads, Top):
        if ranking is None:
            raise ValueError("a {top: k} head choice needs the head sweep's ranking")
        heads = tuple([m for m in ranking if m[0] in layers][: heads.k])
    if is_pairs(heads):
        return FeatureSpec.of_maps(heads, reducer, view)
    return FeatureSpec(layers, heads, reducer, view)


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
