"""What a personalization method is, and what it works with on one client.

A method (:class:`Method`, registered by name in :data:`METHODS`) decides, on a client, what
local training does with the model the server sent and with the client's own state, and which
models the client evaluates. The ClientApp builds a :class:`ClientRun` for every train and
evaluate call and hands it to the configured method (``personalization.method``):

- :meth:`Method.train` trains ``run.model`` (the global backbone with the global heads, or with
  the client's own heads) in place and returns what :func:`fedmtl.training.train_local`
  returns; the client then replies ``run.model``'s update of the federated state, saves its
  heads and whatever the method put in ``run.personal`` (its own state: Ditto's personal model,
  ...), which never leaves the client;
- :meth:`Method.evaluate` returns the metrics of each *view*: ``"test"`` for the model the
  method personalises and, for a method with a global and a personal model, ``"test-global"``
  for the global one (:data:`fedmtl.protocol.TEST`, :data:`fedmtl.protocol.TEST_GLOBAL`).
  Fine-tuning before evaluation happens on a copy: evaluating changes nothing the client keeps.

Each method declares its options (``Params``, a pydantic model checked like a weighting's
parameters), which ``model.heads`` it allows (the first is the one a config that sets only
``personalization.method`` gets) and its checks across sections (:meth:`Method.check`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from fedmtl.aggregation import Rule
from fedmtl.config import DataSection, ExperimentConfig, ModelSection
from fedmtl.data import ClientData, dataset_input_shape, dataset_tasks
from fedmtl.models import MultiTaskModel, build_model
from fedmtl.personalization.head_store import init_heads
from fedmtl.plugins import forget_on_edit
from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.registry import Registry, option_errors
from fedmtl.seeds import Stream, seeded_torch_init, torch_generator
from fedmtl.strict_scalars import StrictScalars
from fedmtl.tasks import TaskSpec
from fedmtl.training import TrainResult, evaluate, train_local
from fedmtl.training.local import Group, Proximal

Metrics = dict[str, dict[str, float]]
"""``{task: {metric: value}}`` of one model on the test split."""
GLOBAL, PERSONAL = "global", "personal"
"""The values of ``model.heads``."""


class NoParams(StrictScalars):
    """A method without options (and the base of every method's ``Params``)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=lambda n: n.replace("_", "-"), populate_by_name=True,
        allow_inf_nan=False,
    )


class MethodParamsError(ValueError):
    """An option of a method is unknown or out of range; one line per option, naming it."""


@dataclass
class ClientRun:
    """One train or evaluate call of one client, as a method sees it.

    Attributes
    ----------
    cfg : ExperimentConfig
        The run config.
    client : int
        The client.
    server_round : int
        The round of the call.
    model : MultiTaskModel
        The global backbone with the global heads (``model.heads = "global"``) or the
        client's own heads, on :attr:`device`: what the client replies the update of.
    data : ClientData
        The client's data.
    tasks : list[TaskSpec]
        The client's tasks.
    device : torch.device
        Where the client computes.
    personal : dict[str, torch.Tensor]
        The method's own state, as the client's store keeps it (empty on a first visit); a
        method's training replaces it, and the client saves it with its heads.
    weighting : Callable[[], Rule] or None
        A new instance of the client's cross-task weighting, with the state it saved (for a
        second model: Ditto's personal one, a fine-tuned copy).
    """

    cfg: ExperimentConfig
    client: int
    server_round: int
    model: MultiTaskModel
    data: ClientData
    tasks: list[TaskSpec]
    device: torch.device
    personal: dict[str, torch.Tensor] = field(default_factory=dict)
    weighting: Callable[[], Rule] | None = None

    @property
    def global_heads(self) -> bool:
        """The heads are federated with the backbone (``model.heads = "global"``)."""
        return self.cfg.model.heads == GLOBAL

    def generator(self, stream: Stream = Stream.BATCHES) -> torch.Generator:
        """The client's mini-batch order of this round in ``stream`` (``BATCHES``: its training's)."""
        return torch_generator(stream, self.cfg.run.seed, self.server_round, self.client)

    def new_weighting(self) -> Rule:
        """A new instance of the client's weighting, with its saved state."""
        if self.weighting is None:
            raise RuntimeError("this ClientRun has no weighting factory")
        return self.weighting()

    def train(
        self, model: MultiTaskModel, weighting: Rule, *, epochs: int | None = None,
        generator: torch.Generator | None = None, track_parts: bool = False, freeze: tuple[Group, ...] = (),
        proximal: Proximal | None = None,
    ) -> TrainResult:
        """:func:`fedmtl.training.train_local` of ``model`` on the client's training split with the
        client's settings (``[client]``): ``epochs`` default to ``client.epochs``, the batch order to
        this round's (:meth:`generator`)."""
        c = self.cfg.client
        return train_local(
            model, self.data.train, self.tasks, weighting,
            epochs=c.epochs if epochs is None else epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
            device=self.device, generator=self.generator() if generator is None else generator,
            gradients=c.gradients, track_parts=track_parts, freeze=freeze, proximal=proximal,
        )

    def evaluate(self, model: MultiTaskModel) -> Metrics:
        """``model``'s metrics on the client's test split."""
        return evaluate(model.to(self.device), self.data.test, self.tasks, device=self.device)


class Method:
    """A personalization method (the base: one model, trained as :func:`fedmtl.training.train_local` does).

    A subclass sets the class attributes below.

    Attributes
    ----------
    name : str
        The registered name (``personalization.method``).
    Params : type[pydantic.BaseModel]
        The options (``[personalization.params]``).
    heads : tuple of str
        The values of ``model.heads`` it allows; the first is the default.
    views : tuple of str
        The stages its evaluation reports (``"test"``, and ``"test-global"`` with a global view):
        the one source of truth for both apps (the client replies exactly these, the server
        rejects an evaluation reply with metrics of any other view).
    trains, keeps, costs, paper : str
        One line each for the methods table (docs/config.md, README).
    keeps_state : bool
        It keeps state of its own between rounds (``run.personal``: Ditto's and APFL's personal
        model, the local method's backbone): the server checks it as it checks personal heads
        (:class:`fedmtl.server.heads.HeadsLedger`), whatever ``model.heads``.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    heads: ClassVar[tuple[str, ...]] = (PERSONAL, GLOBAL)
    views: ClassVar[tuple[str, ...]] = (TEST,)
    trains: ClassVar[str] = ""
    keeps: ClassVar[str] = ""
    costs: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    keeps_state: ClassVar[bool] = False

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params: Any = params if params is not None else self.Params()

    @classmethod
    def parse_params(cls, params: dict[str, Any]) -> BaseModel:
        """``params`` checked against :attr:`Params`.

        Raises
        ------
        MethodParamsError
            One line per bad option, naming it, its value and what is allowed.
        """
        instance, lines = option_errors(cls.Params, params, f"method '{cls.name}'", noun="option", qualify=False)
        if lines:
            raise MethodParamsError("\n".join(lines))
        return instance

    @classmethod
    def check(cls, cfg: ExperimentConfig, params: Any) -> None:
        """Checks across sections (``ValueError`` naming both keys); none by default."""

    def first_visit(self, model: MultiTaskModel, cfg: ExperimentConfig, client: int) -> None:
        """Set the heads of a client that has none saved (default: its own first-visit heads,
        already set from the seed and its id: :func:`fedmtl.personalization.init_heads`)."""

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        """Train ``run.model`` in place (its update is sent); may replace ``run.personal``."""
        return run.train(run.model, weighting, track_parts=track_parts)

    def evaluate(self, run: ClientRun) -> dict[str, Metrics]:
        """The metrics of each view (:attr:`views`): by default ``run.model`` under ``"test"``."""
        return {TEST: run.evaluate(run.model)}


class MethodError(ValueError):
    """A method's training returned something else than a :class:`~fedmtl.training.TrainResult`,
    or left a state (``run.personal``) that is not a dict of str → torch.Tensor (one line naming
    the method)."""


def train_checked(method: Method, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
    """``method.train(run, weighting)``, its result and the state it left checked.

    Raises
    ------
    MethodError
        ``personalization.method = '<name>': <what is wrong>``: the client saves the state and
        replies the result, which would otherwise fail later, naming neither.
    """
    result = method.train(run, weighting, track_parts=track_parts)
    problem = _result_problem(result) or _state_problem(run.personal)
    if problem:
        raise MethodError(f"personalization.method = '{method.name}': {problem}")
    return result


def _result_problem(result: object) -> str:
    """Why ``result`` is not what a method's ``train`` returns (``""``: it is)."""
    if isinstance(result, TrainResult):
        return ""
    shown = " ".join(repr(result).split())[:40]  # one line, whatever the value's repr spans
    return (f"train returned {shown} (of type {type(result).__name__}); it must return the "
            "fedmtl.training.TrainResult of ClientRun.train")


def _state_problem(state: object) -> str:
    """Why ``state`` cannot be a method's state (``""``: it can): a dict of str → torch.Tensor."""
    must = "the state ClientRun.personal must be a dict of str -> torch.Tensor"
    if not isinstance(state, dict):
        return f"{must}, not of type {type(state).__name__}"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"{must}; it has the key {key!r:.40} of type {type(key).__name__}"
        if not isinstance(value, torch.Tensor):
            return f"{must}; {key!r:.40} is of type {type(value).__name__}"
    return ""


METHODS: Registry[type[Method]] = Registry("personalization method")
"""Every personalization method, by name."""


def register(cls: type[Method]) -> type[Method]:
    """Register ``cls`` under ``cls.name``.

    Raises
    ------
    ValueError
        ``cls`` sets no ``name`` of its own (a config could not name it).
    """
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"personalization method {cls.__name__} sets no class attribute name = \"...\" of its "
                         "own; a config names a method by it")
    return METHODS.register(name)(cls)


def make_method(name: str, params: dict[str, Any] | None = None) -> Method:
    """The method ``name`` with its options (checked: :class:`MethodParamsError`)."""
    cls = METHODS.get(name)
    return cls(cls.parse_params(dict(params or {})))


# -- shared pieces -------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _initial_state(model_cfg: ModelSection, data_cfg: DataSection, seed: int) -> dict[str, torch.Tensor]:
    with seeded_torch_init(Stream.MODEL_INIT, seed):
        model = build_model(model_cfg, dataset_input_shape(data_cfg), dataset_tasks(data_cfg))
    return model.federated_state(global_heads=True)


forget_on_edit(_initial_state.cache_clear)  # an edited plugin backbone initialises anew


def initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The server's initial model, backbone and heads of every task, as
    :meth:`~fedmtl.models.MultiTaskModel.federated_state` with global heads keys it (the same
    draw as the server's: ``Stream.MODEL_INIT``). Cached per process; do not modify."""
    return _initial_state(cfg.model, cfg.data, cfg.run.seed)


def initial_heads(cfg: ExperimentConfig, tasks: list[str]) -> dict[str, torch.Tensor]:
    """The heads of ``tasks`` in the server's initial model (the same for every client)."""
    prefix = "heads."
    return {k[len(prefix):]: v.clone() for k, v in initial_state(cfg).items()
            if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in tasks}


def initial_model(run: ClientRun) -> MultiTaskModel:
    """The model the client held at round 0: the server's initial backbone with the initial
    global heads, or (personal heads) the client's first-visit heads; on ``run.device``."""
    model = copy.deepcopy(run.model).cpu()
    model.load_federated_state(initial_state(run.cfg) if run.global_heads else {
        k: v for k, v in initial_state(run.cfg).items() if not k.startswith("heads.")})
    if not run.global_heads:
        init_heads(model, run.cfg.run.seed, run.client)
    return model.to(run.device)


MODEL_PREFIX = "model."
"""Keys of a personal whole model's state in the client's personal state (``run.personal``)."""


def personal_model(run: ClientRun) -> MultiTaskModel:
    """The client's personal whole model (Ditto's and APFL's v): from its store, else the model it
    held at round 0 (:func:`initial_model`)."""
    state = {k[len(MODEL_PREFIX):]: v for k, v in run.personal.items() if k.startswith(MODEL_PREFIX)}
    if not state:
        return initial_model(run)
    model = copy.deepcopy(run.model)
    model.load_state_dict(state)
    return model


def personal_state(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    """``model``'s state as personal state entries (CPU copies under :data:`MODEL_PREFIX`)."""
    return {MODEL_PREFIX + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def finetuned(run: ClientRun, epochs: int, part: str, lr: float = 0.0) -> MultiTaskModel:
    """A copy of ``run.model`` fine-tuned for ``epochs`` epochs on the client's training split
    (``part``: ``"heads"`` with the backbone frozen, or ``"full"``), with a new instance of its
    weighting, its own batch order (``Stream.FINETUNE``) and learning rate ``lr`` (0: the
    client's ``client.lr``). ``run.model`` is not changed."""
    tuned = copy.deepcopy(run.model)
    if lr:
        run = dataclasses.replace(run, cfg=run.cfg.with_values(client={"lr": lr}))
    if epochs:
        freeze: tuple[Group, ...] = ("backbone",) if part == "heads" else ()
        run.train(tuned, run.new_weighting(), epochs=epochs, generator=run.generator(Stream.FINETUNE), freeze=freeze)
    return tuned


def combined(results: list[TrainResult]) -> TrainResult:
    """Several training phases of one call as one result: losses and weights averaged over all
    steps, the task parts of the last phase that has them."""
    steps = sum(r.steps for r in results)
    tasks = list(results[0].task_losses)

    def mean(of: Callable[[TrainResult], dict[str, float]]) -> dict[str, float]:
        return {t: sum(of(r)[t] * r.steps for r in results) / max(steps, 1) for t in tasks}

    parts = [r.parts for r in results if r.parts is not None]
    return TrainResult(results[0].num_examples, steps, mean(lambda r: r.task_losses), mean(lambda r: r.task_weights),
                       parts[-1] if parts else None)


def global_view(run: ClientRun, personal: MultiTaskModel) -> dict[str, Metrics]:
    """The two views: ``personal`` under ``"test"``, ``run.model`` under ``"test-global"``."""
    return {TEST: run.evaluate(personal), TEST_GLOBAL: run.evaluate(run.model)}


def stable_step_problem(key: str, strength: float, cfg: ExperimentConfig) -> str:
    """Why a proximal strength ``strength`` (at ``key``) makes local SGD diverge (``""``: it does not).

    On the term alone, SGD with heavy-ball momentum m converges iff ``lr · strength < 2 (1 + m)``.
    """
    limit = 2 * (1 + cfg.client.momentum)
    if cfg.client.lr * strength >= limit:
        return (f"{key} = {strength:g} with client.lr = {cfg.client.lr:g} and client.momentum = "
                f"{cfg.client.momentum:g}: local SGD diverges on the proximal term (lr × strength = "
                f"{cfg.client.lr * strength:g} must be < 2 (1 + momentum) = {limit:g}); lower client.lr or the "
                f"strength, or raise client.momentum")
    return ""
