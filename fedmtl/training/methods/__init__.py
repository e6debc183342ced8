"""Personalization methods (``personalization.method``), one per module, registered by name.

:mod:`~fedmtl.training.methods.base` defines what a method is (:class:`Method`) and
what it works with on a client (:class:`ClientRun`); importing this package registers every
method in :data:`METHODS`.
"""

from fedmtl.training.methods import apfl, ditto, fedbabu, fedper, fedprox, fedrep, finetune, local, none
from fedmtl.training.methods.base import (
    GLOBAL,
    METHODS,
    PERSONAL,
    ClientRun,
    Method,
    MethodError,
    MethodParamsError,
    NoParams,
    initial_heads,
    initial_state,
    make_method,
    train_checked,
)

__all__ = [
    "GLOBAL",
    "METHODS",
    "PERSONAL",
    "ClientRun",
    "Method",
    "MethodError",
    "MethodParamsError",
    "NoParams",
    "apfl",
    "ditto",
    "fedbabu",
    "fedper",
    "fedprox",
    "fedrep",
    "finetune",
    "initial_heads",
    "initial_state",
    "local",
    "make_method",
    "none",
    "train_checked",
]
