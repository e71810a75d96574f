"""The encoder: loading by hub name, alias or folder, random initialisation and the local
cache (``load``); fine-tuning (``finetune``, its loop in ``finetune_loop``) and the leak
guard that keeps held-out sentences out of its training batches (``guard``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "finetune": [
            "RECORD",
            "Finetuned",
            "FinetunedClassifier",
            "finetune_encoder",
            "finetune_key",
        ],
        "guard": ["finetune_data"],
        "load": [
            "ALIASES",
            "Encoder",
            "cached_encoder",
            "check_encoder",
            "encoders_dir",
            "fingerprint",
            "length_sorted_batches",
            "load_encoder",
            "local_encoder",
        ],
    },
)
