"""Which SuperNodes the server may give work to: the nodes its deployment registered.

With SuperNode authentication, Flower 1.41 gives every registered public key a fixed node
id (``flwr supernode register`` prints it), and only a node holding the private key can
act as that node id. But Flower's open-source Control API asks for no credential, so anyone
who reaches it can register a key of their own and start a SuperNode claiming any
``partition-id``. A deployment that knows the node ids it registered writes them, one per
line, to a file and points :data:`ADMITTED_NODES_ENV` at it (in the environment of the
process that runs the ServerApp: ``fedmtl deploy local`` does this, the compose files'
auth overlay too). The server then never queries, maps or sends work to any other node;
each refused node is logged once and counted (:attr:`Admission.refused`).

Without the variable every node is admitted (simulations, deployments without auth).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from logging import WARNING
from pathlib import Path

from flwr.common import log

ADMITTED_NODES_ENV = "FEDMTL_ADMITTED_NODES_FILE"
"""Environment variable: the file of admitted node ids (one decimal id per line)."""


class AdmissionError(RuntimeError):
    """The admitted-nodes file is missing or malformed."""


def write_admitted_nodes(path: str | Path, node_ids: Iterable[int]) -> Path:
    """Write ``node_ids`` one per line to ``path`` (``0644``: node ids are no secret, but only
    the file's owner may change them).

    Parameters
    ----------
    path : str or Path
        The file (its folder must exist).
    node_ids : iterable of int
        The node ids ``flwr supernode register`` returned.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    text = "".join(f"{int(n)}\n" for n in node_ids)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def read_admitted_nodes(path: str | Path) -> frozenset[int]:
    """The node ids of an admitted-nodes file (blank lines and ``#`` comments ignored).

    Raises
    ------
    AdmissionError
        The file cannot be read, holds something that is not a node id, or no id at all.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AdmissionError(f"{ADMITTED_NODES_ENV} = '{path}': cannot read the admitted node ids "
                             f"({exc.strerror or exc})") from None
    ids = set()
    for number, line in enumerate(lines, start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if not item.isdigit():
            raise AdmissionError(f"{ADMITTED_NODES_ENV} = '{path}', line {number}: '{item}' is not a node id")
        ids.add(int(item))
    if not ids:
        raise AdmissionError(f"{ADMITTED_NODES_ENV} = '{path}': no node id in the file; "
                             f"write the ids `flwr supernode register` printed, one per line")
    return frozenset(ids)


class Admission:
    """Screens node ids: all of them (``admitted`` is None) or only the admitted ones.

    Parameters
    ----------
    admitted : frozenset of int, optional
        The node ids the deployment registered; None admits every node.
    """

    def __init__(self, admitted: frozenset[int] | None = None) -> None:
        self.admitted = admitted
        self.refused: set[int] = set()
        """Nodes refused so far (each logged once)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Admission:
        """The admission of :data:`ADMITTED_NODES_ENV` (every node when it is unset or empty)."""
        path = (os.environ if environ is None else environ).get(ADMITTED_NODES_ENV, "").strip()
        return cls(read_admitted_nodes(path) if path else None)

    def screen(self, node_ids: Iterable[int]) -> list[int]:
        """The admitted nodes of ``node_ids`` (in order); log every newly refused one."""
        nodes = list(node_ids)
        if self.admitted is None:
            return nodes
        for node in nodes:
            if node not in self.admitted and node not in self.refused:
                self.refused.add(node)
                log(WARNING, "node %d is not one of the %d SuperNodes this deployment registered: refused, "
                            "never sent work (%d refused so far)", node, len(self.admitted), len(self.refused))
        return [n for n in nodes if n in self.admitted]
