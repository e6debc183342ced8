"""Every random stream of a run, derived from the run seed in one place.

A stream is named by a :class:`Stream` salt and keyed by integers (the run seed, a round, a
client id, ...). NumPy streams come from :func:`rng`, a generator seeded by NumPy's
``SeedSequence`` of the keys and the salt, so two streams with different keys or salts are
independent. Torch streams take an
integer seed from :func:`torch_seed` (the initial model, mini-batch order, head
initialisation, feature skew).

Recorded runs reproduce bit for bit: ``rng(seed, client, Stream.X)`` draws exactly what
``np.random.default_rng([seed, client, X])`` drew before this module existed, and the four
torch streams keep their original integer mixes (:data:`LEGACY_TORCH_MIX`); a new torch
stream gets its seed from the ``SeedSequence`` of its keys.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """The salt of each random stream: appended to the keys so that streams never collide."""

    SAMPLING = 0x5A3
    """Server: which clients train and evaluate each round."""
    FAULTS = 0xFA17
    """Injected faults (``[faults]``) per round, attempt and client."""
    TASK_SETS = 0x7A5C
    """Which tasks each client holds (``data.task-sets``)."""
    POWER_LAW = 0x9A
    """Client sizes of the power-law partitioner."""
    MULTIMNIST_CLIENT = 7
    """A MultiMNIST client's split and pairing of digits."""
    SYNTHETIC_MODELS = 0x51
    """Synthetic(α, β): the tasks' shared model parameters."""
    SYNTHETIC_DEVICE = 0x5E
    """Synthetic(α, β): one device's model and inputs."""
    SYNTHETIC_IID_MODELS = 0x5D
    """Synthetic-IID: the one model (per task) every device labels its inputs with."""
    SYNTHETIC_SPLIT = 0x5F
    """Synthetic(α, β): a client's train/validation/test split."""
    CELEBA_SPLIT = 0xCE1
    """CelebA: a client's train/validation/test split."""
    ARRESTS_SPLIT = 0xA2
    """Arrests: a client's train/validation/test split."""
    MODEL_INIT = 0x1417
    """Torch: the initial global model (backbone and, with global heads, the heads)."""
    BATCHES = 0xBA7C
    """Torch: the order of a client's mini-batches in one round (or a centralized epoch)."""
    HEAD_INIT = 0x4EAD
    """Torch: a client's personal heads on its first visit."""
    FEATURE_SKEW = 0xF5E
    """Torch: a client's input noise (``data.feature-skew = "noise"``)."""
    POOLED_ORDER = 0x9001
    """The order a dataset's pooled rows are partitioned in (``data.partitioner`` other than
    ``natural``): a seeded permutation, so that no partitioner sees the natural clients in it."""
    FINETUNE = 0xF17E
    """Torch: the order of a client's mini-batches when it fine-tunes a copy before evaluating
    (``personalization.method = "finetune"`` or ``"fedbabu"``)."""
    CLIENT_CALL = 0xCA11
    """Torch's global generator during one client call (train or evaluate, per round, attempt
    and client): what a plugin's dropout layer or ``torch.rand`` draws (:func:`seeded_global_rng`)."""
    SERVER_ROUND = 0x5E7D
    """Torch's global generator while the server aggregates one round (a plugin rule's draws)."""
    RULE_GROUP = 0x6409
    """A rule's own generator in one group of a two-level plan (its seed, the group's name:
    :func:`text_key`), so that the groups draw independent numbers."""


def seed_sequence(*keys: int) -> np.random.SeedSequence:
    """NumPy's ``SeedSequence`` of ``keys`` (non-negative integers, salts included)."""
    return np.random.SeedSequence([int(k) for k in keys])


def rng(*keys: int) -> np.random.Generator:
    """A NumPy generator for the stream ``keys`` (e.g. ``rng(seed, client, Stream.FAULTS)``).

    Parameters
    ----------
    *keys : int
        Non-negative integers: the run seed first, then whatever tells this stream's draws
        apart, usually ending with a :class:`Stream` salt.
    """
    return np.random.default_rng(seed_sequence(*keys))


def _mix(*parts: int) -> int:
    """The original 63-bit mix of the mini-batch order seed (kept for reproducibility)."""
    seed = 0x9E3779B97F4A7C15
    for part in parts:
        seed = (seed ^ (int(part) + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) % (2**63)
    return seed


LEGACY_TORCH_MIX: dict[Stream, Callable[..., int]] = {
    Stream.MODEL_INIT: lambda seed: seed,
    Stream.BATCHES: _mix,
    Stream.HEAD_INIT: lambda seed, client: (seed * 1_000_003 + client * 7_919 + 12_345) % (2**63),
    Stream.FEATURE_SKEW: lambda seed, client: seed * 1_000_003 + client * 31 + 17,
}
"""Torch streams that predate this module, with the integer mix they have always used."""


TORCH_RNG_LOCK = threading.RLock()
"""Held by every fedmtl block that seeds, draws from or restores torch's global CPU generator
(:func:`seeded_torch_init`, building a model, a weighting that seeds it), so that ClientApps
running in threads of one process (``engine.backend = "inprocess"`` with several workers) never
interleave their draws: each block draws exactly what it draws when it runs alone."""


def text_key(text: str) -> int:
    """A key (a 63-bit integer) for ``text``, the same in every process (Python's ``hash`` of a
    string is not: it is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def torch_seed(stream: Stream, *keys: int) -> int:
    """A 63-bit torch seed for ``stream`` keyed by ``keys`` (the run seed first).

    The streams of :data:`LEGACY_TORCH_MIX` keep their original mix, so recorded runs give
    the same numbers; any other stream takes the first 63 bits of the ``SeedSequence`` of
    ``keys`` and the stream's salt.
    """
    legacy = LEGACY_TORCH_MIX.get(stream)
    if legacy is not None:
        return int(legacy(*keys))
    return int(seed_sequence(*keys, stream).generate_state(1, np.uint64)[0]) >> 1


def torch_generator(stream: Stream, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`torch_seed`."""
    return torch.Generator().manual_seed(torch_seed(stream, *keys))


@contextmanager
def seeded_torch_init(stream: Stream, *keys: int) -> Iterator[None]:
    """Seed torch's CPU generator by :func:`torch_seed` for the block, then restore it.

    Module initialisation (``reset_parameters``) draws from torch's global CPU generator;
    inside this block it draws from ``stream`` and the caller's generator state is left as
    it was.
    """
    with seeded_global_rng(stream, *keys, exclusive=True):
        yield


@contextmanager
def seeded_global_rng(stream: Stream, *keys: int, exclusive: bool = False) -> Iterator[None]:
    """Seed torch's global CPU generator by :func:`torch_seed` for the block, then restore it.

    fedmtl's own code draws from generators of its own; plugin code may draw from torch's
    global one (a backbone's ``nn.Dropout``, a rule's ``torch.rand``). Seeded per client call
    and per server round, those draws are the same in every run with the same seed, on every
    worker a call lands on, and in a resumed run.

    Parameters
    ----------
    stream : Stream
        :attr:`Stream.CLIENT_CALL` or :attr:`Stream.SERVER_ROUND`.
    *keys : int
        The run seed first, then the call's keys.
    exclusive : bool
        Hold :data:`TORCH_RNG_LOCK` for the whole block, so that no other thread of this
        process draws from or reseeds the generator meanwhile (ClientApps in threads,
        ``engine.backend = "inprocess"``); otherwise it is held only while the generator is
        seeded and restored.
    """
    with TORCH_RNG_LOCK if exclusive else nullcontext():  # held from the seeding to the restore
        with TORCH_RNG_LOCK:
            saved = torch.random.get_rng_state()
            torch.random.default_generator.manual_seed(torch_seed(stream, *keys))
        try:
            yield
        finally:
            with TORCH_RNG_LOCK:
                torch.random.set_rng_state(saved)


def draws_at_random(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a layer that draws from torch's global generator when training
    (dropout of any kind); a ClientApp training it holds that generator to itself
    (:func:`seeded_global_rng` with ``exclusive``)."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in module.modules())
