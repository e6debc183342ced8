"""The composition root: the runners that launch experiments.

This package and :mod:`fedmtl.cli` are the only code that imports both Flower apps
(:mod:`fedmtl.server`, :mod:`fedmtl.clients`) and the core: the Ray simulation
(:mod:`~fedmtl.launch.simulation`), sweeps (:mod:`~fedmtl.launch.sweep`), ``flwr run``
(:mod:`~fedmtl.launch.flwr_run`) and local deployments (:mod:`~fedmtl.launch.deploy`,
:mod:`~fedmtl.launch.certificates`).
"""
