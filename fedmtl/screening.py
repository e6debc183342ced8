"""Screening of client updates before aggregation.

Checks applied by the server to every reply (all Flower-free; :mod:`fedmtl.server.replies`
applies them to Flower messages):

- :func:`update_problem`: is the update well formed? Every key of the global model, each with
  its shape, and only values finite in float32 (the server combines updates in float32). A
  malformed update is rejected whatever the weighting.
- :func:`number_values`, :func:`train_metrics_problem`, :func:`evaluate_metrics_problem`: are
  the reply's metrics numbers, with the required keys, of the client's own tasks
  (:class:`ClientLimits`, :class:`KnownClients`), in their valid ranges?
- :func:`norm_outliers`: which updates are far longer than the round's typical one? An update
  whose Euclidean norm exceeds ``factor`` times the median norm of the round is rejected
  (``server.norm-screening``); the median is robust to a minority of outliers. Where the
  server knows each client's training split, the bound grows with a client's local steps
  beyond the median client's (:func:`work_allowances`). This is the norm
  bound used against model-replacement updates (Sun et al., 2019, "Can you really backdoor
  federated learning?", arXiv:1911.07963), made relative to the round's median.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedmtl.metric_sets import MAX_METRICS, MAX_NAME, metric_set_problem
from fedmtl.one_line import one_line
from fedmtl.protocol import (
    EVALUATE_REPLY_KEYS,
    HEADS_IN,
    LOSS,
    LOSS_BEFORE,
    NUM_EXAMPLES,
    TEST,
    TEST_GLOBAL,
    TRAIN,
    TRAIN_REPLY_KEYS,
    WEIGHT,
    TrainCall,
    metric_key,
    parse_metric_keys,
)
from fedmtl.tasks import TASK_KINDS

if TYPE_CHECKING:
    from fedmtl.config import DataSection


def keys_problem(have: Iterable[str], expected: Iterable[str]) -> str:
    """Why the tensor names ``have`` differ from ``expected`` (``""`` when they are the same):
    the first missing name, else the first unexpected one (cut to 64 characters)."""
    have, expected = list(have), list(expected)
    missing = [k for k in expected if k not in have]
    if missing:
        return f"missing {len(missing)} tensor(s), e.g. '{missing[0]}'"
    extra = [k for k in have if k not in expected]
    if extra:
        return f"unexpected tensor '{_short(extra[0])}'"
    return ""


def update_problem(update: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> str:
    """Why ``update`` cannot be aggregated into a model shaped like ``like`` (``""`` if it can).

    Parameters
    ----------
    update : dict[str, torch.Tensor]
        A client's update (or one task part of it), keyed like the global model.
    like : dict[str, torch.Tensor]
        The global model's state.
    """
    problem = keys_problem(update, like)
    if problem:
        return problem
    for key, ref in like.items():
        value = update[key]
        if tuple(value.shape) != tuple(ref.shape):
            return f"'{key}' has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.is_complex() or value.dtype == torch.bool:
            return f"'{key}' has dtype {value.dtype}, not a real number type"
        # finiteness as the server combines updates: in float32 (a finite float64 1e300 is not)
        if not bool(torch.isfinite(value.to(torch.float32)).all()):
            return f"'{key}' has non-finite values (NaN or Inf)"
    return ""


def metrics_problem(values: dict[str, float]) -> str:
    """Why a reply's metrics cannot be used (``""`` if they can): non-finite or missing counts."""
    for key, value in values.items():
        if not math.isfinite(float(value)):
            return f"metric '{key}' is {value}"
    count = values.get("num-examples")
    if count is None or count <= 0:
        return f"num-examples is {count}"
    return ""


def norm_outliers(norms: list[float], factor: float, minimum: int = 3,
                  allowances: list[float] | None = None) -> list[bool]:
    """Flag the norms above ``factor`` × their median (× each one's allowance).

    Parameters
    ----------
    norms : list[float]
        One update norm per reply.
    factor : float
        The bound relative to the median (> 1); ``0`` turns screening off.
    minimum : int
        With fewer norms than this the median says little and nothing is flagged.
    allowances : list[float], optional
        One multiplier (≥ 1) of the bound per reply: :func:`work_allowances` for clients that
        take more local steps than the median client (default: 1 for all).

    Returns
    -------
    list[bool]
        ``True`` where the update is an outlier. With a median of 0 (most replies moved
        nothing) no length is typical, and nothing is flagged.
    """
    median = float(np.median(norms)) if norms else 0.0
    if factor == 0 or len(norms) < minimum or median == 0:
        return [False] * len(norms)
    allowances = [1.0] * len(norms) if allowances is None else allowances
    return [n > factor * median * a for n, a in zip(norms, allowances, strict=True)]


def work_allowances(steps: list[int]) -> list[float]:
    """Each client's allowance for its local work: ``max(1, s_k / median(s))`` for its ``s_k``
    local steps (the bound grows with them, never below the median client's).

    With SGD, ``‖θ_end − θ_start‖ ≤ η Σ_s ‖g_s‖``: an update's length grows at most in proportion
    to the steps taken (for gradients of a similar size), so a client holding 260 times the
    median client's examples (a power-law federation, e.g. Synthetic(1, 1)) may honestly send
    an update ten times the median length; measured on ``configs/synthetic.toml`` with q-FFL,
    such clients were screened out every time they were drawn. The steps must be ones the
    server knows (its own count of each client's training split), not ones a client reports:
    a client that claims more data would otherwise buy a larger bound."""
    median = float(np.median(steps)) if steps else 0.0
    if median <= 0:
        return [1.0] * len(steps)
    return [max(1.0, s / median) for s in steps]


# -- self-reported quantities --------------------------------------------------------------
MAX_LOSS = 1e4
"""The largest loss a reply may report (training losses, evaluation losses, MSE and MAE): far
above any loss of a model that still learns (cross-entropy starts near ln C). It keeps a loss
of 1e30 out, but it cannot stop a lie: the server cannot check a loss, and a client reporting
1e4 against the others' ~2 still takes almost all of the weight of q-FFL (q = 1: 0.9996) and
TERM (1.0); AFL and PropFair give it about a quarter or less (docs/reliability.md)."""
MAX_PLACEMENT = 256
"""The longest placement string (host, node, device) kept in ``placement.csv``."""
RATE_METRICS = ("accuracy", "positive-rate-", "tpr-", "fpr-", "demographic-parity-diff-", "equalized-odds-diff-",
                "top-class-rate")
"""Evaluation metrics that are fractions, in [0, 1] (a name equal to one, or starting with
one ending in '-'; ``accuracy`` also covers ``accuracy-<group>-<v>`` and ``accuracy-gap-<group>``,
``top-class-rate`` also ``top-class-rate-<group>-<v>``)."""
COUNT_METRICS = ("count-", "positives-")
"""Evaluation metrics that count test examples, in [0, num-examples]."""
LOSS_METRICS = ("loss", "loss-before", "mse", "mae")
"""Metrics that are losses, in [0, :data:`MAX_LOSS`]."""
MAX_KIND_METRIC = 1e100
"""The largest magnitude of a metric a plugin's task kind declares
(:attr:`fedmtl.tasks.TaskKind.metrics`) under a name none of the ranges above covers: fedmtl
cannot know its range, so any finite value up to this bound passes; far beyond any
measurement, the bound keeps the server's sums and squares of it over clients finite."""
MAX_TASK_WEIGHT = 1e12
"""The largest magnitude of a training reply's ``train.<task>.weight`` (the mean weight the
client's cross-task rule gave the task): a normalised rule's weights are at most 1, but
uncertainty weighting's and IMTL-L's learned weights reach about ``1 / (T · L)``, with losses
``L`` floored at 1e-8 (5e7 for two tasks on a task learnt to a loss of 1e-8); an aggregator's
effective weights (``‖c_t‖ / ‖g_t‖``, or ``d``'s component along ``g_t``, which may be
negative) are of the order of the direction's scale. The weight is recorded, not used: the
bound, far above any of these, keeps a 1e308 out of ``metrics.csv``."""
TRAIN_TASK_METRICS = ("loss", "loss-before", "weight")
"""The per-task metrics of a training reply (``train.<task>.<metric>``)."""
LARGEST_INT = 2**63
"""Integers a reply may carry are below this in magnitude (Flower's wire form: sint64)."""


@dataclass(frozen=True)
class ClientLimits:
    """What the server knows of one client, to bound what it reports.

    Attributes
    ----------
    tasks : frozenset[str]
        The tasks the client holds: a reply may report (and send parts of) these only.
    max_train : int
        The most training examples it may report (0 = no bound).
    max_test : int
        The most test examples it may report (0 = no bound).
    """

    tasks: frozenset[str]
    max_train: int = 0
    max_test: int = 0
    kinds: tuple[tuple[str, str], ...] = ()
    """``(task, kind)`` of each task (:mod:`fedmtl.tasks`); empty: the kinds are not known,
    and the evaluation metrics are checked by their names alone."""

    groups: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    """``(attribute, values)`` of each group attribute the dataset's evaluation reports
    (:func:`fedmtl.data.dataset_groups`); ``None``: not known, any consistent groups pass."""

    exact: bool = False
    """``max_train`` and ``max_test`` are the client's own split sizes (the server built the
    federation: ``server.max-examples = 0``), not a cap: an evaluation reports ``max_test``."""

    def kind(self, task: str) -> str | None:
        """The kind of ``task`` (``None``: not known)."""
        return dict(self.kinds).get(task)

    def group_values(self) -> dict[str, tuple[str, ...]] | None:
        """``{attribute: values}`` of :attr:`groups` (``None``: not known)."""
        return None if self.groups is None else dict(self.groups)


def check_data_here(data: DataSection, seed: int, max_examples: int) -> None:
    """Build the federation here when the server bounds replies by it (``max_examples = 0``).

    :func:`fedmtl.data.load_federation` is cached per process, so the server's later use costs
    nothing; called before any client is asked, a config no partition fits stops the run at
    once.

    Raises
    ------
    DataError
        The dataset's own mistake or a partition the config cannot have, named as it is.
    RuntimeError
        The data cannot be built here (a local path missing on the server's machine), naming
        ``server.max-examples`` as the way out.
    """
    if max_examples != 0:
        return
    from fedmtl.data import load_federation
    from fedmtl.data.checks import DataError

    try:
        load_federation(data, seed)
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise RuntimeError(
            f"server.max-examples = 0 bounds each client's num-examples by its data, but the "
            f"server cannot build data.dataset = '{data.dataset}' here ({error}); set "
            f"server.max-examples to the most examples a client may hold") from error


class KnownClients:
    """Every client's :class:`ClientLimits`, from the same config the clients build their data from.

    With ``max_examples = 0`` the server builds the federation as the clients do
    (:func:`fedmtl.data.load_federation` is deterministic) and bounds each client's counts by
    its own train and test splits (:meth:`fedmtl.data.Federation.sizes`: the shipped datasets
    count them without building the data; a dataset without ``split_sizes`` builds a client
    once, on its first reply, and keeps only the counts). With
    ``max_examples > 0`` (a deployment whose server does not hold the data) no data is built:
    counts are bounded by ``max_examples``; the task sets come from ``data.task-sets``, which
    needs no data.

    Parameters
    ----------
    data : DataSection
        ``[data]`` of the run.
    seed : int
        ``run.seed``.
    max_examples : int
        ``server.max-examples``.
    """

    def __init__(self, data: DataSection, seed: int, max_examples: int) -> None:
        self.data, self.seed, self.max_examples = data, seed, max_examples
        self._known: dict[int, ClientLimits] = {}
        self._task_sets: list[list[str]] | None = None
        check_data_here(data, seed, max_examples)  # fail at start-up, not at the first reply

    def __call__(self, client: int) -> ClientLimits:
        """The limits of ``client`` (computed on first use, then kept)."""
        if client not in self._known:
            self._known[client] = self._limits(client)
        return self._known[client]

    def _limits(self, client: int) -> ClientLimits:
        from fedmtl.data import load_federation

        if self.max_examples == 0:
            federation = load_federation(self.data, self.seed)
            train, test = federation.sizes(client)  # counted without building the data where it can
            specs = federation.client_tasks(client)
            return ClientLimits(frozenset(t.name for t in specs), train, test, tuple((t.name, t.kind) for t in specs),
                                self._groups(), exact=True)
        from fedmtl.data import dataset_tasks

        names = self._client_task_sets()[client]
        kinds = {t.name: t.kind for t in dataset_tasks(self.data)}
        return ClientLimits(frozenset(names), self.max_examples, self.max_examples,
                            tuple((name, kinds[name]) for name in names if name in kinds), self._groups())

    def _groups(self) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        from fedmtl.data import dataset_groups

        groups = dataset_groups(self.data)
        return None if groups is None else tuple(sorted(groups.items()))

    def _client_task_sets(self) -> list[list[str]]:
        from fedmtl.data import dataset_tasks
        from fedmtl.data.task_sets import assign_tasks

        if self._task_sets is None:
            names = [t.name for t in dataset_tasks(self.data)]
            self._task_sets = assign_tasks(self.data.num_clients, names, self.seed, self.data)
        return self._task_sets


def _short(name: object) -> str:
    """A name a client sent, as one printable line of at most 64 characters (:func:`one_line`)."""
    return one_line(name, 64)


def as_integer(value: object) -> int | None:
    """``value`` as an ``int`` when it is an integral number below :data:`LARGEST_INT` in
    magnitude (an ``int``, or a finite ``float`` without fraction; not a ``bool``), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    number = int(value)
    return number if abs(number) < LARGEST_INT else None


def number_values(record: Mapping[str, object]) -> dict[str, float] | str:
    """A metric record's values as floats, or why it cannot be read: every value must be a
    number (``int`` or ``float``, not a list or a ``bool``), finite, and an ``int`` below
    :data:`LARGEST_INT` in magnitude; at most :data:`fedmtl.metric_sets.MAX_METRICS` of them, each
    name a string of at most :data:`fedmtl.metric_sets.MAX_NAME` characters."""
    if len(record) > MAX_METRICS:
        return f"{len(record)} metrics, more than the {MAX_METRICS} a reply may carry"
    values = {}
    for key, value in record.items():
        if not isinstance(key, str) or len(key) > MAX_NAME:
            return f"metric name '{_short(key)}...' is longer than {MAX_NAME} characters"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric '{_short(key)}' is a {type(value).__name__}, not a number"
        if isinstance(value, int) and abs(value) >= LARGEST_INT:
            return f"metric '{_short(key)}' is {value}, out of range"
        if not math.isfinite(value):
            return f"metric '{_short(key)}' is {value}"
        values[key] = float(value)
    return values


def count_problem(values: Mapping[str, float], most: int) -> str:
    """Why ``num-examples`` is unusable (``""`` if it is usable): absent, not a whole number,
    below 1, or above ``most`` (the client's known data size or ``server.max-examples``; 0 = no bound)."""
    count = values.get(NUM_EXAMPLES)
    if count is None:
        return f"no {NUM_EXAMPLES}"
    if as_integer(count) is None or count < 1:
        return f"{NUM_EXAMPLES} is {count}"
    if most and count > most:
        return f"{NUM_EXAMPLES} is {count:g}, more than the {most} examples the client holds"
    return ""


def _task_keys_problem(values: Mapping[str, float], stage: str, plain: tuple[str, ...],
                       limits: ClientLimits | None, optional: tuple[str, ...] = ()) -> str:
    """Every key is a plain key of ``plain`` or ``<stage>.<task>.<metric>`` of a task the client
    holds (or of a stage of ``optional``, which may be absent)."""
    for key in values:
        parts = key.split(".")
        if key in plain:
            continue
        if len(parts) != 3 or parts[0] not in (stage, *optional) or not parts[1] or not parts[2]:
            return f"unexpected metric '{_short(key)}'"
        if limits is not None and parts[1] not in limits.tasks:
            return f"metric '{_short(key)}' of task '{_short(parts[1])}', which the client does not hold"
    if not parse_metric_keys(values, stage):
        return f"no {stage} metrics"
    return ""


def _range_problem(key: str, value: float, low: float, high: float) -> str:
    return f"metric '{_short(key)}' is {value:g}, outside [{low:g}, {high:g}]" if not low <= value <= high else ""


def _all_tasks_problem(reported: Collection[str], limits: ClientLimits | None, what: str) -> str:
    """A client's reply must report every task it holds (an honest one always does: a client
    that left out a task would hide it from aggregation and from the fairness statistics)."""
    if limits is None:
        return ""
    missing = sorted(limits.tasks - set(reported))
    return f"no {what} metrics of task '{_short(missing[0])}', which the client holds" if missing else ""


def contradicts_heads(values: Mapping[str, float], call: TrainCall | None) -> bool:
    """The reply's ``heads-fingerprint-in`` is not the one the call named: it did not start from
    the heads the server knows the client has (an honest client refuses such a call instead;
    this is a reply of another call replayed, or a client that trained from other heads)."""
    return call is not None and call.heads_in is not None and HEADS_IN in values and values[HEADS_IN] != call.heads_in


def _call_problem(values: Mapping[str, float], call: TrainCall | None) -> str:
    """What the reply says that contradicts the call it answers: the heads it started from
    (``heads-fingerprint-in``) are not those the call named, or its losses before training are
    missing where the call asked for them, or there where it did not."""
    if call is None:
        return ""
    if contradicts_heads(values, call):
        return f"{HEADS_IN} {values[HEADS_IN]!r}, not the {call.heads_in!r} the call named"
    for task, metrics in parse_metric_keys(values, TRAIN).items():
        if call.needs_losses_before and LOSS_BEFORE not in metrics:
            return f"no {metric_key(TRAIN, task, LOSS_BEFORE)}, which the call asked for"
        if not call.needs_losses_before and LOSS_BEFORE in metrics:
            return f"{metric_key(TRAIN, task, LOSS_BEFORE)}, which the call did not ask for"
    return ""


def train_metrics_problem(values: Mapping[str, float], limits: ClientLimits | None,
                          call: TrainCall | None = None) -> str:
    """Why a training reply's metrics (numbers, :func:`number_values`) cannot be used (``""`` if they can).

    Required: the plain keys of :data:`fedmtl.protocol.TRAIN_REPLY_KEYS`, a whole
    ``num-examples`` in [1, ``limits.max_train``] (equal to it where the server knows the
    client's split exactly, :attr:`ClientLimits.exact`: a client trains on all of it), and for
    every task the client holds (and only those) its ``loss``; per-task metrics are
    :data:`TRAIN_TASK_METRICS`, losses in [0, :data:`MAX_LOSS`], weights in
    [−:data:`MAX_TASK_WEIGHT`, :data:`MAX_TASK_WEIGHT`]. Given the ``call`` the reply answers,
    the reply must agree with it (:func:`_call_problem`): its ``heads-fingerprint-in`` is the one the call named, and it
    reports ``loss-before`` exactly when the call asked for it.
    """
    missing = [k for k in TRAIN_REPLY_KEYS if k not in values]
    if missing:
        return f"no {missing[0]}"
    problem = count_problem(values, limits.max_train if limits else 0)
    if not problem and limits is not None and limits.exact and values[NUM_EXAMPLES] != limits.max_train:
        problem = (f"{NUM_EXAMPLES} is {values[NUM_EXAMPLES]:g}, not the {limits.max_train} training examples the "
                   "client holds")
    problem = problem or _task_keys_problem(values, TRAIN, TRAIN_REPLY_KEYS, limits)
    if problem:
        return problem
    for task, metrics in parse_metric_keys(values, TRAIN).items():
        if LOSS not in metrics:
            return f"no {metric_key(TRAIN, task, LOSS)}"
        for name, value in metrics.items():
            if name not in TRAIN_TASK_METRICS:
                return f"unexpected metric '{_short(metric_key(TRAIN, task, name))}'"
            if name in LOSS_METRICS and (problem := _range_problem(metric_key(TRAIN, task, name), value, 0, MAX_LOSS)):
                return problem
            if name == WEIGHT and (problem := _range_problem(metric_key(TRAIN, task, name), value, -MAX_TASK_WEIGHT,
                                                             MAX_TASK_WEIGHT)):
                return problem
    return _all_tasks_problem(parse_metric_keys(values, TRAIN), limits, TRAIN) or _call_problem(values, call)


def evaluation_range(name: str, count: float) -> tuple[float, float] | None:
    """The valid range of evaluation metric ``name`` on ``count`` test examples: fractions in
    [0, 1], counts in [0, count], losses in [0, :data:`MAX_LOSS`]; ``None`` for a name that no
    task kind reports (:mod:`fedmtl.tasks`, :mod:`fedmtl.group_fairness`)."""
    if any(name == r or (r.endswith("-") and name.startswith(r)) or name.startswith(r + "-") for r in RATE_METRICS):
        return 0.0, 1.0
    if name.startswith(COUNT_METRICS):
        return 0.0, count
    if name in LOSS_METRICS:
        return 0.0, MAX_LOSS
    return None


def declared_metric_range(name: str, count: float, kind: str | None) -> tuple[float, float] | None:
    """The valid range of evaluation metric ``name`` of a task of ``kind`` (``None``: not
    known) on ``count`` test examples: :func:`evaluation_range`, or, for a metric the kind
    declares (:attr:`fedmtl.tasks.TaskKind.metrics`) that no range covers (a plugin kind's
    own metric), [−:data:`MAX_KIND_METRIC`, :data:`MAX_KIND_METRIC`]; ``None`` for a name
    neither reports."""
    valid = evaluation_range(name, count)
    if valid is not None or kind is None or kind not in TASK_KINDS:
        return valid
    if name in TASK_KINDS.get(kind).metrics:
        return -MAX_KIND_METRIC, MAX_KIND_METRIC
    return None


def _view_problem(values: Mapping[str, float], views: Collection[str]) -> str:
    """A metric of a known view (:data:`fedmtl.protocol.TEST_GLOBAL`) outside ``views``."""
    for key in values:
        view = key.split(".", 1)[0]
        if view == TEST_GLOBAL and view not in views and "." in key:
            return (f"metric '{_short(key)}' of the '{view}' view, which the run's personalization method "
                    f"does not have (its views: {', '.join(views)})")
    return ""


def evaluate_metrics_problem(values: Mapping[str, float], limits: ClientLimits | None,
                             views: Collection[str] | None = None) -> str:
    """Why an evaluation reply's metrics (numbers) cannot be used (``""`` if they can): a whole
    ``num-examples`` in [1, ``limits.max_test``], ``test.<task>.<metric>`` keys (and, optionally,
    those of the run's other views: the global view's ``test-global.<task>.<metric>``) of the
    client's own tasks only, each metric in its range (:func:`evaluation_range`).

    ``views`` are the views the run's personalization method reports
    (:attr:`fedmtl.training.methods.Method.views`; ``None``: not known, ``test`` required and
    ``test-global`` allowed): a metric of a view the method does not have (``test-global`` from
    a one-model method) is a problem, and so is a reply without one of the method's views (an
    honest client reports every one: one left out would hide the client from that view's
    statistics). Where the server knows the client's test split exactly
    (:attr:`ClientLimits.exact`), ``num-examples`` must be its size: a client evaluates on all
    of it.
    """
    bounded = views is not None
    views = tuple(views) if views is not None else (TEST, TEST_GLOBAL)
    problem = count_problem(values, limits.max_test if limits else 0)
    if not problem and limits is not None and limits.exact and values[NUM_EXAMPLES] != limits.max_test:
        problem = (f"{NUM_EXAMPLES} is {values[NUM_EXAMPLES]:g}, not the {limits.max_test} test examples the client "
                   "holds (a client evaluates on all of them)")
    problem = problem or _view_problem(values, views)
    problem = problem or _task_keys_problem(values, TEST, EVALUATE_REPLY_KEYS, limits,
                                            tuple(v for v in views if v != TEST))
    if problem:
        return problem
    for stage in (TEST, TEST_GLOBAL):
        per_task = parse_metric_keys(values, stage)
        if bounded and stage in views and not per_task:
            return f"no '{stage}' metrics, which the run's personalization method reports"
        if (stage == TEST or per_task) and (problem := _view_problem_of(stage, per_task, limits, values[NUM_EXAMPLES])):
            return problem
    return ""


def _view_problem_of(stage: str, per_task: Mapping[str, Mapping[str, float]], limits: ClientLimits | None,
                     count: float) -> str:
    """Why the metrics of one view (``{task: {metric: value}}``) cannot be used: a metric no
    of fedmtl's task kinds and not one the task's own kind declares reports, or one out of its
    range (:func:`declared_metric_range`), a set of a task's metrics its kind could not
    have produced (:func:`fedmtl.metric_sets.metric_set_problem`, when the kinds are known), or
    a task of the client's missing."""
    for task, metrics in per_task.items():
        kind = limits.kind(task) if limits else None
        for name, value in metrics.items():
            valid = declared_metric_range(name, count, kind)
            if valid is None:
                return f"unexpected metric '{_short(metric_key(stage, task, name))}'"
            if problem := _range_problem(metric_key(stage, task, name), value, *valid):
                return problem
        groups = limits.group_values() if limits else None
        if kind is not None and (problem := metric_set_problem(metrics, kind, count, groups)):
            return f"{stage}.{_short(task)}: {one_line(problem, 300)}"
    return _all_tasks_problem(per_task, limits, stage)


PLACEMENT_CHARACTER = re.compile(r"[\w.:/()-]")
"""What a host, Ray node or device name is made of (``node-3.lan``, ``cuda:0``)."""


def placement_text(value: object) -> str:
    """A placement value as kept in ``placement.csv`` and shown by ``fedmtl report``: a string
    of at most :data:`MAX_PLACEMENT` characters, each one :data:`PLACEMENT_CHARACTER` allows, any
    other (a space, ``|``, ``=``, a control character) and a leading ``-`` as ``?`` (anything
    else: ``""``): a client's text cannot add a cell to the report's Markdown tables nor start
    a spreadsheet formula in the CSV."""
    if not isinstance(value, str):
        return ""
    text = "".join(c if PLACEMENT_CHARACTER.fullmatch(c) else "?" for c in value[:MAX_PLACEMENT])
    return "?" + text[1:] if text.startswith("-") else text
