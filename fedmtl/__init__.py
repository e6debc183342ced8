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
- the composition root, :mod:`fedmtl.cli` and :mod:`fedmtl.launch`, launches simulations,
  sweeps, ``flwr run`` and local deployments: it alone imports both apps.
"""

__version__ = "0.1.0"
