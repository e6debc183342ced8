"""Weightings, one per file: objectives in, weights out (the update is ``Σ_i w_i u_i``).

Importing this package imports every module in it, which registers each rule.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
