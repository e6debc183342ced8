"""fedmtl: a federated multi-task learning simulator.

A Flower server aggregates a shared backbone with fair cross-client and cross-task
weightings; each client keeps its own personalized task heads.

The package has three layers (docs/architecture.md; the rules are checked by import-linter,
see ``[tool.importlinter]`` in pyproject.toml):

- the core (models, data, aggregation maths, training loops, fairness metrics, the wire
  protocol, the results format) does not import Flower;
- the Flower apps, :mod:`fedmtl.server` (ServerApp and strategy) and :mod:`fedmtl.clients`
  (ClientApp), import the core and never each other; in the repository they are the
  top-level ``server/`` and ``clients/`` folders;
- the composition root, :mod:`fedmtl.cli`, :mod:`fedmtl.api` and :mod:`fedmtl.launch`, launches
  simulations, sweeps, ``flwr run`` and local deployments: it alone imports both apps.

``fedmtl.run``, ``fedmtl.sweep``, ``fedmtl.load_runs`` and the other names of :mod:`fedmtl.api`
are the Python API (``docs/python.md``).
"""

__version__ = "0.1.0"

_API = ("RunResult", "SweepResult", "load_runs", "make_config", "resume", "run", "sweep")
"""Names of :mod:`fedmtl.api` (the Python API, ``docs/python.md``) available as ``fedmtl.<name>``;
imported on first use, so ``import fedmtl`` stays light."""


def __getattr__(name: str) -> object:
    if name in _API:
        from fedmtl import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedmtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
