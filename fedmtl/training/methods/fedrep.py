"""FedRep: heads trained with the representation frozen, then the representation with heads frozen."""

from __future__ import annotations

from pydantic import Field

from fedmtl.aggregation import Rule
from fedmtl.config import ExperimentConfig
from fedmtl.training import TrainResult
from fedmtl.training.methods.base import PERSONAL, ClientRun, Method, NoParams, combined, register


@register
class FedRep(Method):
    """Each round a client first trains its personal heads for ``head-epochs`` epochs with the
    received backbone frozen, then the backbone for ``body-epochs`` epochs with its heads frozen;
    only the backbone is federated (Collins et al., "Exploiting Shared Representations for
    Personalized Federated Learning", ICML 2021).

    The two phases take one batch order in turn (this round's) and each its own SGD
    momentum; ``client.epochs`` is not used. The reply is the backbone's update of the second
    phase alone (zero with ``body-epochs = 0``); the training metrics average both phases'
    steps. FedRep has no global model (its representation is global, its heads never are): its
    one model, global backbone + own heads, is evaluated under ``test``, as FedPer's.
    """

    name = "fedrep"
    heads = (PERSONAL,)
    trains = "own heads (backbone frozen), then the backbone (heads frozen)"
    keeps = "the heads"
    costs = "(head-epochs + body-epochs) / client.epochs × FedPer's local training"
    paper = "Collins et al., ICML 2021"

    class Params(NoParams):
        head_epochs: int = Field(5, ge=0, description="Epochs of the heads, backbone frozen (first).")
        body_epochs: int = Field(1, ge=0, description="Epochs of the backbone, heads frozen (second).")

    @classmethod
    def check(cls, cfg: ExperimentConfig, params: Params) -> None:
        if params.head_epochs == params.body_epochs == 0:
            raise ValueError("personalization.params.head-epochs = 0 and personalization.params.body-epochs = 0: "
                             "nothing would train; give one of them at least 1")

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        generator = run.generator()
        heads = run.train(run.model, weighting, epochs=self.params.head_epochs, generator=generator,
                          freeze=("backbone",))
        body = run.train(run.model, weighting, epochs=self.params.body_epochs, generator=generator,
                         freeze=("heads",), track_parts=track_parts)
        return combined([heads, body])
