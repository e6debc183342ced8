"""fedmtl: a federated multi-task learning simulator.

A Flower server aggregates a shared backbone with fair cross-client and cross-task
weightings; each client keeps its own personalized task heads. The library itself
(``fedmtl``) does not depend on Flower: models, data, aggregation maths, training loops,
fairness metrics and the results format live here; the Flower wiring lives in the
top-level ``server`` and ``clients`` packages.
"""

__version__ = "0.1.0"
