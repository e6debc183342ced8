"""Where a client's personal heads live between rounds.

Heads never leave the client. Any :class:`HeadStore` keeps them across rounds; the core
has the one that knows nothing of Flower (the ClientApp adds one in the node's Flower
``Context.state``, :mod:`fedmtl.clients.context_store`):

- :class:`DiskHeadStore`: files per client id under a folder, written atomically; it
  survives process and node restarts. Saved with the round that produced them
  (``clients-<lo>-<hi>/client-<id>.r<round>.safetensors``, 100 clients per folder), it keeps the
  versions a resumed run may need: a run resumed from its checkpoint of round C re-runs round
  C + 1 from the heads of round ≤ C, even for clients that already trained in round C + 1
  before the run was killed, and C may be the older of the two checkpoints kept (the newer one
  unreadable). Each file carries the run's identity (:class:`RunIdentity`): a store given one
  refuses heads of another run, and an unreadable file raises :class:`HeadStoreError` naming it.

On a client's first visit the store is empty and heads are initialised deterministically
from the run seed and the client id (:func:`init_heads`).
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from fedmtl.atomic import write_bytes
from fedmtl.models import MultiTaskModel
from fedmtl.personalization import head_file
from fedmtl.seeds import Stream, seeded_torch_init

HeadState = dict[str, torch.Tensor]
WEIGHTING_KEY = "__weighting_state__"
PERSONAL_PREFIX = "__personal__."
"""Prefix of the keys of a personalization method's own state, saved with the heads
(:mod:`fedmtl.training.methods`: Ditto's personal model, ...)."""
CHECKPOINTS_KEPT = 2
"""How many of the newest checkpoints a run keeps (``RunRecorder.save_checkpoint``): a resume
may fall back to the oldest of them, so the store keeps the heads it needs."""


class HeadStoreError(RuntimeError):
    """A head file cannot be used (unreadable, or of another run); the message is one line naming it."""


@dataclass(frozen=True)
class RunIdentity:
    """Who wrote a head file: the run's id and the fingerprint of its config.

    Attributes
    ----------
    run_id : str
        The run's random id (``run-id`` in its run folder; ``""``: unknown, nothing is checked).
    config : str
        The fingerprint of the run's config (:func:`fedmtl.results.config_fingerprint`).
    """

    run_id: str = ""
    config: str = ""


class HeadStore(Protocol):
    """Load and save the head state of a client."""

    def load(self, client_id: int, until_round: int | None = None) -> HeadState | None:
        """The heads saved last (in a round ≤ ``until_round``), or ``None`` on a first visit."""

    def save(self, client_id: int, state: HeadState, server_round: int | None = None,
             checkpoint_every: int = 1) -> None:
        """Persist the heads trained in ``server_round``."""


SHARD_SIZE = 100
"""Clients per folder of a :class:`DiskHeadStore`: client ``c``'s files live in
``clients-<lo>-<hi>/`` with ``lo = SHARD_SIZE · ⌊c / SHARD_SIZE⌋`` and ``hi = lo + SHARD_SIZE - 1``.

A save lists its client's folder to prune old versions: with every client's files in one
folder that listing grew with the federation (a store of 100,000 clients read 100,000
names at every save); a folder of 100 clients holds at most a few hundred files."""


class DiskHeadStore:
    """Head files per client under ``root``: ``clients-<lo>-<hi>/client-<id>.r<round>.safetensors``
    (or ``client-<id>.safetensors`` when saved without a round), :data:`SHARD_SIZE` clients per
    folder; the file format is :mod:`fedmtl.personalization.head_file`'s.

    Each file holds the heads and the :class:`RunIdentity` of the run that wrote them. A save
    in round R keeps, besides the new file, every version newer than the oldest checkpoint a
    resume may fall back to (the :data:`CHECKPOINTS_KEPT` newest checkpoint rounds before R are
    multiples of ``checkpoint_every``; the oldest is
    ``checkpoint_every`` · (⌊(R − 1)/checkpoint_every⌋ − :data:`CHECKPOINTS_KEPT` + 1)) and the
    newest version of a round up to it; older versions are deleted.

    A store written before the folders (every file directly under ``root``) is read too: a
    client's files found there are moved into its folder the first time the client finds none
    in it (:meth:`adopt_flat_files` moves them all at once).

    Parameters
    ----------
    root : str or Path
        Folder of the store (created on first save).
    identity : RunIdentity, optional
        The run using the store: written into every file, and a file of another run is
        refused on load (:class:`HeadStoreError`). Without one nothing is checked.
    """

    def __init__(self, root: str | Path, identity: RunIdentity | None = None) -> None:
        self.root = Path(root)
        self.identity = identity or RunIdentity()

    def folder(self, client_id: int) -> Path:
        """The folder of client ``client_id``'s files (:data:`SHARD_SIZE` clients per folder)."""
        low = client_id // SHARD_SIZE * SHARD_SIZE
        return self.root / f"clients-{low}-{low + SHARD_SIZE - 1}"

    def path(self, client_id: int, server_round: int | None = None) -> Path:
        """File of client ``client_id`` (of the heads trained in ``server_round``)."""
        tag = "" if server_round is None else f".r{server_round}"
        return self.folder(client_id) / f"client-{client_id}{tag}{head_file.SUFFIX}"

    def versions(self, client_id: int) -> dict[int, Path]:
        """``{round: file}`` of the client's versioned files (``client-<id>.r<round>.safetensors``;
        of a round with a file in both formats, the safetensors one).

        Raises
        ------
        HeadStoreError
            When the client's folder cannot be listed (one line naming it).
        """
        files = self._files(client_id)
        if not files and self.adopt_flat_files(client_id):  # a store of before: its files move in
            files = self._files(client_id)
        return {r: paths[0] for r, paths in files.items()}

    def _files(self, client_id: int) -> dict[int, list[Path]]:
        """``{round: files}`` of the client's versioned files in its folder (:func:`_group_all`)."""
        folder = self.folder(client_id)
        prefix = f"client-{client_id}."  # a prefix test before parsing
        return _group_all(folder, [n for n in _names(folder) if n.startswith(prefix)]).get(client_id, {})

    def index(self) -> dict[int, dict[int, Path]]:
        """``{client: {round: file}}`` of every versioned file in the store, as :meth:`versions`
        finds them (a client with none in its folder: its files directly under ``root``, of a
        store written before the folders, where they are), one listing per folder; nothing
        is moved.

        Raises
        ------
        HeadStoreError
            When a folder cannot be listed (one line naming it).
        """
        out: dict[int, dict[int, Path]] = {}
        names = _names(self.root)
        for name in names:
            if name.startswith("clients-"):
                folder = self.root / name
                found = _group(folder, _names(folder))
                # a file in another client's folder is not where that client looks
                out.update({c: v for c, v in found.items() if self.folder(c) == folder})
        for client, rounds in _group(self.root, names).items():
            out.setdefault(client, rounds)
        return out

    def clients(self) -> list[int]:
        """The clients with a versioned file in the store, sorted."""
        return sorted(self.index())

    def adopt_flat_files(self, client_id: int | None = None) -> int:
        """Move head files written directly under ``root`` (before the store had folders) into
        their clients' folders: those of ``client_id``, or of every client; how many moved.

        A move is a rename within the store (atomic), the newest round first: a move cut short
        leaves the client its newest heads. A name that is not a head file's stays; a file another
        process moved first is skipped.

        Raises
        ------
        HeadStoreError
            When a file cannot be moved (one line naming it).
        """
        found = [(parsed, name) for name in _names(self.root) if (parsed := _parse_name(name)) is not None
                 and (client_id is None or parsed[0] == client_id)]
        newest_first = sorted(found, key=lambda f: -1 if f[0][1] is None else f[0][1], reverse=True)
        moved = 0
        for (client, _), name in newest_first:
            target = self.folder(client) / name  # the same name: its suffix says its format
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.root / name, target)
            except FileNotFoundError:  # moved by another process meanwhile
                continue
            except OSError as exc:
                raise HeadStoreError(f"head file '{self.root / name}' cannot be moved to '{target.parent}' "
                                     f"({exc.strerror or exc})") from None
            moved += 1
        return moved

    def latest(self, client_id: int, until_round: int | None = None) -> tuple[int | None, Path]:
        """The round and file of the client's newest version of a round ≤ ``until_round``
        (``(None, unversioned file)`` when there is none; that file may not exist)."""
        return _newest(self.versions(client_id), until_round) or (None, self.unversioned(client_id))

    def unversioned(self, client_id: int) -> Path:
        """The client's file saved without a round: in the current format, else one written
        before 2026-12-01 (``.pt``) when only that exists."""
        path = self.path(client_id)
        legacy = path.with_suffix(head_file.LEGACY_SUFFIX)
        return legacy if not path.exists() and legacy.exists() else path

    def read(self, path: Path) -> tuple[HeadState, RunIdentity | None]:
        """The heads in ``path`` and the identity written with them (``None`` for a file
        written without one).

        Raises
        ------
        HeadStoreError
            When the file cannot be read as heads (one line naming it).
        """
        try:
            found = head_file.decode(path)
        except ValueError as exc:
            raise HeadStoreError(f"head file '{path}' is unreadable ({exc})") from None
        return found.heads, None if found.run_id is None else RunIdentity(found.run_id, found.config)

    def load(self, client_id: int, until_round: int | None = None) -> HeadState | None:
        """The heads saved last (in a round ≤ ``until_round``), or ``None`` on a first visit.

        Raises
        ------
        HeadStoreError
            When that file is unreadable, or was written by another run than this store's.
        """
        _, path = self.latest(client_id, until_round)
        if not path.exists():
            return None
        state, written_by = self.read(path)
        mine = self.identity.run_id
        if mine and written_by is not None and written_by.run_id != mine:
            raise HeadStoreError(f"head file '{path}' belongs to run {written_by.run_id}, not to this run "
                                 f"({mine}); give each run its own client.head-store-dir")
        return state

    def save(self, client_id: int, state: HeadState, server_round: int | None = None,
             checkpoint_every: int = 1) -> None:
        """Persist the heads trained in ``server_round`` with the store's identity; prune old versions.

        Raises
        ------
        HeadStoreError
            When a tensor cannot be stored, or the file cannot be written (one line naming it).
        """
        path = self.path(client_id, server_round)
        try:
            data = head_file.encode(state, self.identity.run_id, self.identity.config)
        except ValueError as exc:
            raise HeadStoreError(f"client {client_id}'s heads cannot be saved to '{path}': {exc}") from None
        try:
            write_bytes(path, data)
        except OSError as exc:
            raise HeadStoreError(f"head file '{path}' cannot be written ({exc.strerror or exc})") from None
        if server_round is None:
            return
        oldest = oldest_resumable_checkpoint(server_round, checkpoint_every)
        files = self._files(client_id)
        older = [r for r in files if r <= oldest]
        keep = max(older) if older else None
        for r in older:  # of the round kept, its copy in the format of before goes
            for old in files[r] if r != keep else files[r][1:]:
                try:
                    old.unlink(missing_ok=True)
                except OSError as exc:
                    raise HeadStoreError(f"head file '{old}' cannot be deleted ({exc.strerror or exc})") from None


def _names(folder: Path) -> list[str]:
    """The names in ``folder`` (none when it does not exist yet).

    Raises
    ------
    HeadStoreError
        When it exists but cannot be listed (one line naming it).
    """
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise HeadStoreError(f"head store folder '{folder}' cannot be listed ({exc.strerror or exc})") from None


HEAD_FILE_NAME = re.compile(r"client-(0|[1-9][0-9]*)(?:\.r(0|[1-9][0-9]*))?(\.safetensors|\.pt)")
"""A head file's name: ``client-<id>[.r<round>]<suffix>``, ids and rounds in ASCII digits without
leading zeros (the only spelling the store writes), suffix ``.safetensors`` or, before
2026-12-01, ``.pt``."""


def _parse_name(name: str) -> tuple[int, int | None] | None:
    """``(client, round)`` of a head file's name (:data:`HEAD_FILE_NAME`; round ``None`` for a
    file saved without one), or ``None`` for any other name."""
    match = HEAD_FILE_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), None if match[2] is None else int(match[2])


def _group_all(folder: Path, names: Iterable[str]) -> dict[int, dict[int, list[Path]]]:
    """``{client: {round: files}}`` of the versioned head files among ``names`` in ``folder``;
    of a round with a file in both formats, the safetensors one (written later) first."""
    out: dict[int, dict[int, list[Path]]] = {}
    for name in names:
        parsed = _parse_name(name)
        if parsed is None or parsed[1] is None:
            continue
        files = out.setdefault(parsed[0], {}).setdefault(parsed[1], [])
        files.insert(0 if name.endswith(head_file.SUFFIX) else len(files), folder / name)
    return out


def _group(folder: Path, names: Iterable[str]) -> dict[int, dict[int, Path]]:
    """``{client: {round: file}}``: :func:`_group_all`'s first file of each round."""
    return {c: {r: files[0] for r, files in rounds.items()} for c, rounds in _group_all(folder, names).items()}


def _newest(versions: Mapping[int, Path], until_round: int | None) -> tuple[int, Path] | None:
    """The newest ``(round, file)`` of ``versions`` with round ≤ ``until_round`` (any round when
    ``None``), or ``None``."""
    rounds = [r for r in versions if until_round is None or r <= until_round]
    if not rounds:
        return None
    newest = max(rounds)
    return newest, versions[newest]


def oldest_resumable_checkpoint(server_round: int, checkpoint_every: int = 1) -> int:
    """The oldest checkpoint round a resume may fall back to while round ``server_round`` runs:
    the oldest of the :data:`CHECKPOINTS_KEPT` newest multiples of ``checkpoint_every`` below it
    (≤ 0 when there is none)."""
    newest = checkpoint_every * ((server_round - 1) // checkpoint_every)
    return newest - checkpoint_every * (CHECKPOINTS_KEPT - 1)


@dataclass(frozen=True)
class HeadsProblem:
    """Why a client's heads cannot serve a resume (:func:`check_heads`).

    Attributes
    ----------
    client : int
        The client.
    kind : str
        ``"missing"`` (no version as new as the round it last trained in), ``"unreadable"``,
        ``"other-run"`` (written by another run), ``"other-config"`` (written under another
        config) or ``"no-identity"`` (written without a run identity).
    message : str
        One line naming the client, the file or the folder.
    """

    client: int
    kind: str
    message: str


def check_heads(store: DiskHeadStore, trained: Mapping[int, int], until_round: int,
                also: Callable[[str], bool] | None = None) -> list[HeadsProblem]:
    """What keeps ``store`` from serving a run resumed after round ``until_round``.

    Parameters
    ----------
    store : DiskHeadStore
        The run's store, with the run's identity.
    trained : mapping of int to int
        Per client, the last round ≤ ``until_round`` whose heads it saved (its training reply
        was aggregated); a client not in it may start from fresh heads.
    until_round : int
        The checkpoint round the run resumes after.
    also : callable, optional
        Whether another config fingerprint counts as the store's (the run's config with fewer
        rounds, before it was extended: :func:`fedmtl.results.shorter_runs`).

    Returns
    -------
    list of HeadsProblem
        One per client whose newest version of a round ≤ ``until_round`` is missing, too old,
        unreadable or not of this run and config.
    """
    problems = []
    index = store.index()  # one listing per folder, not one per client; nothing moves
    for client in sorted(set(trained) | set(index)):
        found, path = _newest(index.get(client, {}), until_round) or (None, store.path(client))
        need = trained.get(client)
        if need and (found is None or found < need):
            have = "none" if found is None else f"only round {found}'s"
            problems.append(HeadsProblem(client, "missing", f"client {client} trained in round {need} but "
                                         f"'{store.folder(client)}' has {have} "
                                         f"(client-{client}.r<round>{head_file.SUFFIX})"))
            continue
        if found is None:
            continue
        try:
            _, written_by = store.read(path)
        except HeadStoreError as exc:
            problems.append(HeadsProblem(client, "unreadable", str(exc)))
            continue
        mine = store.identity
        if written_by is None:
            problems.append(HeadsProblem(client, "no-identity", f"head file '{path}' has no run identity"))
        elif mine.run_id and written_by.run_id != mine.run_id:
            problems.append(HeadsProblem(client, "other-run",
                                         f"head file '{path}' belongs to run {written_by.run_id}, not {mine.run_id}"))
        elif mine.config and written_by.config != mine.config and not (also and also(written_by.config)):
            problems.append(HeadsProblem(client, "other-config",
                                         f"head file '{path}' was written under another config"))
    return problems


def init_heads(model: MultiTaskModel, seed: int, client_id: int) -> None:
    """Re-initialise ``model``'s heads from ``(seed, client_id)`` alone (deterministic)."""
    with seeded_torch_init(Stream.HEAD_INIT, seed, client_id):
        for head in model.heads.values():
            for module in head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def restore_heads(model: MultiTaskModel, store: HeadStore, seed: int, client_id: int) -> bool:
    """Load the client's heads into ``model``; initialise them on a first visit.

    Returns
    -------
    bool
        ``True`` when heads were found in the store.
    """
    found, _ = restore_client(model, store, seed, client_id)
    return found


def restore_client(
    model: MultiTaskModel, store: HeadStore, seed: int, client_id: int, until_round: int | None = None,
    personal: dict[str, torch.Tensor] | None = None,
) -> tuple[bool, torch.Tensor | None]:
    """Like :func:`restore_heads`, reading the store once (the version of a round ≤
    ``until_round``); also return the packed local weighting state saved with the heads
    (``None`` if there is none; :func:`unpack_state`). The personalization method's state
    saved with them (:data:`PERSONAL_PREFIX`) goes into ``personal`` when given (its keys
    without the prefix)."""
    state = store.load(client_id, until_round)
    if state is None:
        init_heads(model, seed, client_id)
        return False, None
    packed = state.pop(WEIGHTING_KEY, None)
    for key in [k for k in state if k.startswith(PERSONAL_PREFIX)]:
        value = state.pop(key)
        if personal is not None:
            personal[key[len(PERSONAL_PREFIX):]] = value
    model.heads.load_state_dict(state)
    return True, packed


def pack_state(state: dict[str, Any]) -> torch.Tensor:
    """A weighting's ``state_dict`` as a uint8 tensor (it travels with the heads)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def unpack_state(packed: torch.Tensor) -> dict[str, Any]:
    """Inverse of :func:`pack_state`."""
    return torch.load(io.BytesIO(packed.numpy().tobytes()), weights_only=True)


def save_client_state(
    store: HeadStore, client_id: int, model: MultiTaskModel, weighting_state: dict[str, Any],
    server_round: int | None = None, checkpoint_every: int = 1, personal: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Save the heads and (when not empty) the local weighting's state, trained in ``server_round``,
    with the personalization method's own state ``personal`` (keys prefixed :data:`PERSONAL_PREFIX`)."""
    state = dict(model.heads_state())
    if weighting_state:
        state[WEIGHTING_KEY] = pack_state(weighting_state)
    for key, value in (personal or {}).items():
        state[PERSONAL_PREFIX + key] = value
    store.save(client_id, state, server_round, checkpoint_every)


def load_weighting_state(store: HeadStore, client_id: int) -> dict[str, Any] | None:
    """The local weighting's state saved with the heads, if any."""
    state = store.load(client_id)
    if state is None or WEIGHTING_KEY not in state:
        return None
    return unpack_state(state[WEIGHTING_KEY])


def heads_fingerprint(model: MultiTaskModel) -> float:
    """A float64 checksum of the heads' parameters (for continuity checks in logs/tests):
    :func:`_checksum` of the heads' parameters in order. A client computes it twice per
    training call, so each parameter costs few operations (fewer hand-overs of Python's
    interpreter lock between clients running in threads of one process)."""
    return _checksum(model.heads.parameters())


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> float:
    """A float64 checksum of a personalization method's own state (Ditto's and APFL's personal
    model, their λ or α, the local method's backbone): :func:`_checksum` of its tensors in key
    order (0 for no state)."""
    return _checksum(state[key] for key in sorted(state))


def _checksum(tensors: Iterable[torch.Tensor]) -> float:
    """``Σ_i (i + 1) Σ_j p_ij r_ij`` over the tensors ``p_i`` in order, each flattened, with
    ``r_i`` the ramp ``linspace(1, 2, len(p_i))``, all in float64 (a float32 or integer tensor
    times the float64 ramp multiplies in float64, as its float64 copy would)."""
    total = 0.0
    with torch.no_grad():
        for i, p in enumerate(tensors):
            flat = p.reshape(-1)
            total += (i + 1) * float(torch.mul(flat, _ramp(flat.numel(), flat.device)).sum())
    return total


KEPT_FINGERPRINTS = "kept"
"""A checkpoint's ``heads-fingerprints``: its server's record of the heads holds fingerprints of
what each client keeps (heads and its method's own state: :func:`kept_fingerprint`).
Checkpoints of fedmtl before 2026-12-02 lack it: theirs are of the heads alone."""

FINGERPRINT_TOLERANCE = 1e-10
"""Relative difference within which :func:`check_kept` takes a recomputed fingerprint for the
recorded one: a float64 sum's last bits may follow torch's thread count (its reductions of over
32,768 numbers run in parallel); an edit of a single weight by 1e-6 moves the sum far more."""


def stored_fingerprint(state: HeadState, model: MultiTaskModel, personal_heads: bool) -> float:
    """The :func:`kept_fingerprint` of a client's saved ``state`` (a head file's tensors): its
    heads loaded into ``model`` (a model of the client's tasks, whose parameter order the
    fingerprint follows; its heads are overwritten) and its method's state.

    Raises
    ------
    RuntimeError
        When the file's heads are not those of ``model``'s tasks (``load_state_dict``).
    """
    heads = {k: v for k, v in state.items() if k != WEIGHTING_KEY and not k.startswith(PERSONAL_PREFIX)}
    personal = {k[len(PERSONAL_PREFIX):]: v for k, v in state.items() if k.startswith(PERSONAL_PREFIX)}
    if personal_heads:
        model.heads.load_state_dict(heads)
    return kept_fingerprint(model, personal, personal_heads)


def check_kept(store: DiskHeadStore, ledger: Mapping[int, tuple[int, float] | None], until_round: int,
               model_of: Callable[[int], MultiTaskModel], personal_heads: bool) -> list[HeadsProblem]:
    """Whether the head files a run resumed after ``until_round`` would read are those its
    checkpoint's server expects (``ledger``: :meth:`fedmtl.server.heads.HeadsLedger.state_dict`).

    A client the ledger names ``(round, fingerprint)`` must find a file whose
    :func:`stored_fingerprint` is that fingerprint (it refuses every call otherwise: the
    resumed run would go on without it); a client the ledger does not name has not trained in
    the run and must find no file of a round ≤ ``until_round`` (it would refuse as well).
    ``model_of(client)`` gives a model of the client's tasks. Files :func:`check_heads` finds
    unreadable or missing are left to it.

    Returns
    -------
    list of HeadsProblem
        Kind ``"replaced"`` (another fingerprint) or ``"unexpected"`` (heads of a client that has
        not trained), one per client.
    """
    problems = []
    index = store.index()
    for client in sorted(set(ledger) | set(index)):
        newest = _newest(index.get(client, {}), until_round)
        if newest is None:
            continue
        found_round, path = newest
        if client not in ledger:
            problems.append(HeadsProblem(client, "unexpected", f"client {client} has not trained in this run, yet "
                                         f"'{path}' holds heads of it"))
            continue
        expected = ledger[client]
        if expected is None or found_round < expected[0]:  # not checked by the server; missing: check_heads
            continue
        try:
            state, _ = store.read(path)
            found = stored_fingerprint(state, model_of(client), personal_heads)
        except (HeadStoreError, RuntimeError):  # unreadable, or not this client's heads
            found = None
        if found is None or not math.isclose(found, expected[1], rel_tol=FINGERPRINT_TOLERANCE, abs_tol=1e-300):
            shown = "no heads of this client's tasks" if found is None else f"heads-fingerprint {found!r}"
            problems.append(HeadsProblem(client, "replaced", f"head file '{path}' has {shown}, not the "
                                         f"{expected[1]!r} client {client}'s training of round {expected[0]} left "
                                         "(replaced or edited since)"))
    return problems


def kept_fingerprint(model: MultiTaskModel, state: Mapping[str, torch.Tensor], personal_heads: bool) -> float:
    """The checksum of what a client keeps between rounds (``heads-fingerprint-in`` and
    ``-out``): its heads' (:func:`heads_fingerprint`) when they are personal (with global heads
    they come from the server each round) plus its method's own state's (:func:`state_fingerprint`)."""
    return (heads_fingerprint(model) if personal_heads else 0.0) + state_fingerprint(state)


@functools.lru_cache(maxsize=256)
def _ramp(length: int, device: torch.device) -> torch.Tensor:
    """``linspace(1, 2, length)`` in float64 on ``device`` (read only: shared by every call)."""
    return torch.linspace(1.0, 2.0, length, dtype=torch.float64, device=device)
