"""MLflow and Optuna stores: runs and the run reader (``runs``), Optuna storage and worker
leases (``storage``), checks before a study starts (``preflight``), run descriptions and
provenance (``metadata``), MLflow Models and the registry (``mlflow_model``, with
``pyfunc_entry`` as the model's code), reloading and predicting (``predict``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "metadata": [
            "DESCRIPTION_TAG",
            "dataset_input",
            "describe_model",
            "describe_run",
            "provenance_tags",
        ],
        "mlflow_model": ["log_pyfunc", "promote"],
        "predict": ["ARTIFACT", "check_output", "load_run", "predict_texts", "write_scores"],
        "preflight": ["bound_mlflow_retries", "check_study", "storage_exists", "store_outage"],
        "runs": ["ROLE_TAG", "RunReader", "Tracker", "dumps"],
        "storage": [
            "WORKER_ATTR",
            "WorkerLease",
            "cluster_lease",
            "heartbeat_interval",
            "make_storage",
        ],
    },
)
