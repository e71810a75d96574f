"""Everything a study can fit, behind one protocol (``base.Model``): attention readers
(``reader``), probes (``probe``) and the baselines (``text``, ``length``, ``embedding``,
``finetuned``); their inputs (``inputs``), the training loop (``train``) and the test
evaluation with bootstrap intervals (``evaluation``). Kinds load lazily (``base.KINDS``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "base": ["EpochCallback", "FitResult", "Model", "load_model", "read_config"],
        "embedding": ["EmbeddingModel"],
        "evaluation": ["Evaluation", "evaluate", "write_predictions"],
        "finetuned": ["FinetunedModel"],
        "inputs": ["AttentionInputs", "EmbeddingInputs"],
        "length": ["LengthModel"],
        "probe": ["LinearProbe"],
        "reader": ["ReaderModel"],
        "text": ["MajorityModel", "TfidfModel"],
        "train": ["TrainSettings"],
    },
)
