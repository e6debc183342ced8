"""Fine-tuning: the global model, fine-tuned on a copy before evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.training.methods.base import (
    GLOBAL,
    PERSONAL,
    ClientRun,
    Method,
    Metrics,
    NoParams,
    finetuned,
    global_view,
    register,
)


@register
class FineTune(Method):
    """Federated training as without personalization; before evaluation each client fine-tunes a
    copy of the global model for ``finetune-epochs`` local epochs on its training split
    (FedAvg + FT, the baseline of the personalized-FL literature, e.g. Wang et al., "Federated
    Evaluation of On-device Personalization", 2019).

    The fine-tuned copy is evaluated under ``test`` and the global model under ``test-global``;
    the copy is discarded (nothing the client keeps changes). With ``finetune-epochs = 0`` both
    views are the same model. The global model is the whole federated model
    (``model.heads = "global"``, the default) or, with personal heads, global backbone + own heads.
    """

    name = "finetune"
    heads = (GLOBAL, PERSONAL)
    views = (TEST, TEST_GLOBAL)
    trains = "the global model; a copy is fine-tuned before evaluating"
    keeps = "nothing (personal heads with model.heads = 'personal')"
    costs = "as FedAvg; + finetune-epochs local epochs per evaluation"
    paper = "Wang et al. 2019 (FedAvg + FT)"

    class Params(NoParams):
        finetune_epochs: int = Field(1, ge=0, description="Epochs of fine-tuning before each evaluation (0: none).")
        finetune_part: Literal["full", "heads"] = Field(
            "full", description="What fine-tuning trains: 'full' (the whole copy) or 'heads' (backbone frozen).")
        finetune_lr: float = Field(0.0, ge=0, description="Learning rate of the fine-tuning (0 = client.lr).")

    def evaluate(self, run: ClientRun) -> dict[str, Metrics]:
        return global_view(run, finetuned(run, self.params.finetune_epochs, self.params.finetune_part,
                                         self.params.finetune_lr))
