"""The study file, parsed and checked before anything exists: YAML with file:line errors
(``parse``), the typed schema and the ``encoder:`` section (``schema``), the ``search:``
space and head selections (``space``), feature and classifier specs (``specs``) and the
store URLs (``urls``). Imports only ``core``; no torch, no MLflow.

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "schema": [
            "FinetuneConfig",
            "StudyConfig",
            "load_config",
            "load_study_file",
            "parse_study",
        ],
        "space": ["Range", "SearchConfig", "Top", "head_choice_name"],
        "specs": [
            "ClassifierSpec",
            "FeatureSpec",
            "HPARAMS",
            "Heads",
            "Map",
            "POOLINGS",
            "PROBES",
            "ProbeSpec",
            "READERS",
            "divisible",
            "is_pairs",
            "make_spec",
            "map_name",
            "parse_heads",
            "spec_from_dict",
        ],
        "urls": [
            "DEFAULT_STORAGE",
            "default_tracking_uri",
            "is_local_store",
            "local_path",
            "sqlalchemy_url",
            "validate_storage_url",
            "validate_tracking_uri",
        ],
    },
)
