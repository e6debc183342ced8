"""FedBABU: heads frozen at their initialisation during federated training, fine-tuned before evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedmtl.aggregation import Rule
from fedmtl.config import ExperimentConfig
from fedmtl.models import MultiTaskModel
from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.training import TrainResult
from fedmtl.training.methods.base import (
    PERSONAL,
    ClientRun,
    Method,
    Metrics,
    NoParams,
    finetuned,
    global_view,
    initial_heads,
    register,
)


@register
class FedBABU(Method):
    """Only the body learns in federated training: every client's heads stay at one random
    initialisation, the same for all (the server's initial heads); before evaluation each
    client fine-tunes a copy for ``finetune-epochs`` epochs (Oh, Kim & Yun, "FedBABU: Toward
    Enhanced Representation for Federated Image Classification", ICLR 2022).

    The heads live in the client's store (``model.heads = "personal"``) but never change:
    local training freezes them, so the reply is the backbone's update. Evaluation reports the
    fine-tuned copy under ``test`` and the global model (global backbone + the initial heads)
    under ``test-global``; the copy is discarded. ``finetune-part = "heads"`` fine-tunes the
    heads with the backbone frozen; ``"full"`` the whole copy (the paper studies both).

    ``finetune-lr`` (0: ``client.lr``) sets the fine-tuning's learning rate. A backbone trained
    against fixed random heads, without normalisation, can grow large features: on MultiMNIST
    with LeNet after 25 rounds their mean norm was about 340, and one epoch of head fine-tuning
    at ``client.lr = 0.05`` moved the heads' weights from 0.14 to 20–33 and collapsed every
    prediction to one class (``benchmarks/results/personalization.md``); a smaller
    ``finetune-lr`` avoids that.
    """

    name = "fedbabu"
    heads = (PERSONAL,)
    views = (TEST, TEST_GLOBAL)
    trains = "the backbone (heads frozen at one shared initialisation); a copy is fine-tuned before evaluating"
    keeps = "nothing trained (the fixed initial heads)"
    costs = "FedPer's training; + finetune-epochs local epochs per evaluation"
    paper = "Oh, Kim & Yun, ICLR 2022"

    class Params(NoParams):
        finetune_epochs: int = Field(5, ge=0, description="Epochs of fine-tuning before each evaluation (0: none).")
        finetune_part: Literal["heads", "full"] = Field(
            "heads", description="What fine-tuning trains: 'heads' (backbone frozen) or 'full' (the whole copy).")
        finetune_lr: float = Field(0.0, ge=0, description="Learning rate of the fine-tuning (0 = client.lr).")

    def first_visit(self, model: MultiTaskModel, cfg: ExperimentConfig, client: int) -> None:
        model.heads.load_state_dict(initial_heads(cfg, list(model.heads)))

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        return run.train(run.model, weighting, track_parts=track_parts, freeze=("heads",))

    def evaluate(self, run: ClientRun) -> dict[str, Metrics]:
        return global_view(run, finetuned(run, self.params.finetune_epochs, self.params.finetune_part,
                                         self.params.finetune_lr))
