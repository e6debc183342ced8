"""fedmtl runs on its declared dependencies alone.

The test venv also holds the test extras (cvxpy, ecos, tensorboard, …), so a rule or a run
that needs one of them would pass every other test and fail for a user who installed fedmtl
without them. Here a subprocess refuses to import any module whose distribution is not among
fedmtl's main dependencies (and theirs), then runs every registered rule and a whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: computes the dependency closure, installs the import guard,
# then does the work passed as argv[1] ("rules" or a run folder).
GUARDED = r'''
import importlib.abc, importlib.machinery, importlib.metadata as md, json, re, sys
from pathlib import Path
from packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def closure(root):
    seen, todo = set(), [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = (norm(name), extras)
        if key in seen:
            continue
        seen.add(key)
        for text in md.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen}

allowed = closure("fedmtl")
# every file an installed distribution owns -> the distribution (files no distribution owns,
# the standard library's and fedmtl's own, are allowed)
owner = {}
for dist in md.distributions():
    name = norm(dist.metadata["Name"])
    for file in dist.files or []:
        if file.suffix in (".py", ".so", ".pyd") or file.name == "__init__.py":
            owner[str(dist.locate_file(file).resolve())] = name

def refused(origin):
    dist = owner.get(str(Path(origin).resolve())) if origin else None
    return dist if dist is not None and dist not in allowed else None

class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        dist = refused(spec.origin) or next(
            (refused(str(Path(p) / "__init__.py")) for p in (spec.submodule_search_locations or [])), None)
        if dist:
            raise ModuleNotFoundError(f"{name} ({dist}) is not among fedmtl's declared dependencies", name=name)
        return None

sys.meta_path.insert(0, Guard())
# what was imported before the guard (site, .pth files, this script) must be allowed too
early = {m: refused(getattr(mod, "__file__", None)) for m, mod in list(sys.modules.items())}
early = {m: d for m, d in early.items() if d}
if early:
    raise SystemExit(f"imported before the guard, outside the declared dependencies: {early}")
what = sys.argv[1]
if what == "rules":
    import torch
    from fedmtl.aggregation import RULES, Objectives, make_rule
    failed = {}
    for name in sorted(RULES.names()):
        try:
            rule = make_rule(name, **({"lipschitz": 10.0} if name == "qffl" else {}))
            gen = torch.Generator().manual_seed(0)
            rule.combine(Objectives(updates=torch.randn(4, 6, generator=gen), losses=torch.rand(4, generator=gen) + 0.5,
                                    num_examples=torch.ones(4)))
        except ImportError as error:
            failed[name] = str(error)
    print(json.dumps({"rules": len(RULES.names()), "failed": failed,
                      "refused": sorted({d for d in owner.values() if d not in allowed})}))
else:
    import fedmtl
    result = fedmtl.run(sys.argv[2], overrides=["engine.backend=inprocess"], out=what)
    print(json.dumps({"rows": len(result.metrics)}))
'''


def _guarded(*args: str, tmp_path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", GUARDED, *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["ecos", "pytest", "google.auth"])
def test_the_guard_refuses_what_only_the_test_extras_install(tmp_path, module):
    """The check itself: a package only the test extras install (cvxpy's ECOS solver, pytest,
    mlflow's google-auth, which shares the ``google`` namespace with protobuf, a declared one)
    is installed here but cannot be imported under the guard; a declared one can."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed here: refusing it would prove nothing")
    script = GUARDED.split("what = sys.argv[1]")[0] + "import importlib\n" + (
        f"for m in ({module!r}, 'google.protobuf', 'torchjd'):\n"
        "    try:\n        importlib.import_module(m)\n        print('imported', m)\n"
        "    except ModuleNotFoundError as e:\n        print('refused', m)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["refused", module, "imported", "google.protobuf", "imported", "torchjd"]


def test_every_rule_runs_on_the_declared_dependencies(tmp_path):
    got = _guarded("rules", tmp_path=tmp_path)
    assert {"cvxpy", "ecos"} - set(got["refused"]) == {"cvxpy"}  # cagrad's solver is declared, ecos is not
    assert got["rules"] >= 40
    assert got["failed"] == {}, got["failed"]


@pytest.mark.slow
def test_a_run_works_on_the_declared_dependencies(tmp_path):
    got = _guarded(str(tmp_path / "run"), str(ROOT / "configs" / "smoke.toml"), tmp_path=tmp_path)
    assert got["rows"] > 0
