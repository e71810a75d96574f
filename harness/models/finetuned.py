"""The ``finetuned`` kind: a fine-tuned encoder's own classification head, as a baseline.

Probes on a fine-tuned encoder's attention have an obvious reference: the model that was
fine-tuned, reading the sentence the way it was trained to. This kind puts that model
behind the protocol, so a study logs it (``baseline-finetuned``) with the same metrics,
intervals and prediction files as its trials, and ``load_run`` reloads it.

It is trained by ``harness.encoders.finetune`` on the study's train split (validation picked the
epoch) before the study starts, so ``fit`` trains nothing: it replays the recorded
per-epoch curve. The saved model is the head's tensors (safetensors) plus the encoder it
sits on, named by fingerprint and by the MLflow run that logged it; loading takes the
encoder folder from the local encoder cache (``load_run`` downloads it there first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch

from harness.encoders import FinetunedClassifier
from harness.models.base import EpochCallback, FitResult, write_model
from harness.models.inputs import TextInputs


class FinetunedModel:
    """``predict_proba(texts)``: the class-1 softmax of the fine-tuned model."""

    kind = "finetuned"

    def __init__(self, folder: Path, encoder: dict, positive_label: str | None = None):
        self.inputs = TextInputs()
        self.positive_label = positive_label
        #: ``name``, ``fingerprint`` and ``run_id`` of the fine-tuned encoder
        self.encoder = dict(encoder)
        self.classifier = FinetunedClassifier(folder)

    def fit(
        self,
        inputs: list[str],
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        """Trained already (train split only); report the recorded curve."""
        record = self.classifier.record
        for point in record["history"]:
            if on_epoch is not None:
                on_epoch(int(point["epoch"]), point["train_loss"], point["val_auc"])
        return FitResult(record["best_epoch"], record["best_val_auc"], list(record["history"]))

    def predict_proba(self, inputs: list[str], idx: np.ndarray | None = None) -> np.ndarray:
        texts = list(inputs) if idx is None else [inputs[i] for i in idx]
        return self.classifier.predict_proba(texts)

    def _head(self) -> dict:
        """The tensors outside the base encoder (``classifier.*`` for BERT)."""
        model = self.classifier.model
        prefix = f"{model.base_model_prefix}."
        return {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if not k.startswith(prefix)
        }

    def save(self, directory: Path) -> None:
        settings = {"encoder": self.encoder, "max_len": self.classifier.max_len}
        write_model(self, directory, settings, safetensors.torch.save(self._head()))

    @classmethod
    def load(cls, directory: Path, config: dict) -> FinetunedModel:
        from harness.encoders import local_encoder

        ref = config["encoder"]
        folder = local_encoder(ref["fingerprint"], ref["run_id"])
        model = cls(folder, ref, config.get("positive_label"))
        head = safetensors.torch.load_file(str(Path(directory, "weights.safetensors")))
        model.classifier.model.load_state_dict(head, strict=False)
        return model
