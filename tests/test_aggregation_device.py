"""Server aggregation off the CPU (``server.device``), checked on a CPU-only machine.

CI has no GPU, so the rows go to an *emulated accelerator*: ``OnAccelerator`` is a CPU
tensor that enforces CUDA's rules. An operation that mixes it with a plain CPU tensor of one
or more dimensions raises (as "Expected all tensors to be on the same device" does), and
``.numpy()`` raises (as "can't convert cuda tensor to numpy" does). ``.cpu()`` and
``.to("cpu")`` give a plain tensor; ``.to(t)`` follows ``t``. Every server weighting under
every plan must then run, keep the combined update on the device and give the CPU's result;
where there is a GPU, the same test runs on it too.
"""

from __future__ import annotations

import pytest
import torch

from fedmtl.aggregation import WEIGHTINGS, Objectives, make_weighting
from fedmtl.aggregation.plans import PLANS, AggregationPlan, Row
from fedmtl.determinism import preserved_determinism, use_deterministic
from fedmtl.training.setup import server_device
from fedmtl.validation import load_config

F64 = torch.float64


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _plain(t: torch.Tensor) -> torch.Tensor:
    with torch._C.DisableTorchFunctionSubclass():
        return t.clone().as_subclass(torch.Tensor)


def _to_target(args: tuple, kwargs: dict) -> str:
    """Where ``Tensor.to(*args, **kwargs)`` sends a tensor: "cpu", "accelerator" or "same"."""
    candidates = list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]
    for c in candidates:
        if isinstance(c, OnAccelerator):
            return "accelerator"
        if isinstance(c, torch.Tensor):
            return "cpu"
        if isinstance(c, (str, torch.device)):
            return "cpu" if torch.device(c).type == "cpu" else "accelerator"
    return "same"


class OnAccelerator(torch.Tensor):
    """A CPU tensor with CUDA's device rules (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "numpy":
            raise TypeError("can't convert an accelerator tensor to numpy; copy it to the CPU first")
        if name == "cpu":
            return _plain(args[0])
        if name == "to":
            target = _to_target(args, kwargs)
            with torch._C.DisableTorchFunctionSubclass():
                plain_args = [a.as_subclass(torch.Tensor) if isinstance(a, torch.Tensor) else a for a in args]
                if isinstance(kwargs.get("other"), torch.Tensor):
                    kwargs = {**kwargs, "other": kwargs["other"].as_subclass(torch.Tensor)}
                moved = func(*plain_args, **kwargs)
            on_accelerator = target == "accelerator" or (target == "same" and isinstance(args[0], OnAccelerator))
            return moved.as_subclass(OnAccelerator) if on_accelerator else moved.clone()
        tensors = _tensors(args) + _tensors(kwargs)
        if any(isinstance(t, OnAccelerator) for t in tensors):
            mixed = [t for t in tensors if not isinstance(t, OnAccelerator) and t.dim() > 0]
            if mixed:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but {name} got an accelerator "
                    f"tensor and a CPU tensor of shape {tuple(mixed[0].shape)}"
                )
        return super().__torch_function__(func, types, args, kwargs)


def on_accelerator(t: torch.Tensor) -> OnAccelerator:
    return t.clone().as_subclass(OnAccelerator)


# -- the emulation itself ----------------------------------------------------------------
def test_the_emulated_accelerator_enforces_cuda_rules():
    x, cpu = on_accelerator(torch.ones(3)), torch.ones(3)
    with pytest.raises(RuntimeError, match="same device"):
        _ = x + cpu
    with pytest.raises(RuntimeError, match="same device"):
        torch.stack([x, cpu])
    with pytest.raises(TypeError, match="numpy"):
        x.numpy()
    assert isinstance(x * torch.tensor(2.0), OnAccelerator)  # 0-dim CPU tensors are scalars
    assert type(x.cpu()) is torch.Tensor and type(x.to("cpu", F64)) is torch.Tensor
    assert isinstance(cpu.to(x), OnAccelerator) and isinstance(x @ cpu.to(x), OnAccelerator)
    assert float(x.sum()) == 3.0


# -- every server weighting under every plan ---------------------------------------------
PARAMS = {"qffl": {"lipschitz": 10.0}}
SERVER_WEIGHTINGS = sorted(n for n in WEIGHTINGS.names() if WEIGHTINGS.get(n).scope in ("server", "both"))


ON_DEVICE = {"cpu": lambda u: u, "emulated": on_accelerator, "cuda": lambda u: u.cuda(),
             "cuda-deterministic": lambda u: u.cuda()}
"""How a row reaches each device: left on the CPU, on the emulated accelerator, on a real GPU
(``cuda-deterministic``: with ``run.deterministic``'s kernels, :mod:`fedmtl.determinism`)."""
NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["emulated", pytest.param("cuda", marks=NEEDS_GPU), pytest.param("cuda-deterministic", marks=NEEDS_GPU)]


def on_the_device(t: torch.Tensor, device: str) -> bool:
    """Whether ``t`` is on ``device`` (the emulated accelerator's type, or CUDA)."""
    return isinstance(t, OnAccelerator) if device == "emulated" else t.device.type == "cuda"


def rows(device: str, plan: str, seed: int = 0) -> list[Row]:
    gen = torch.Generator().manual_seed(seed)
    made = []
    for client in range(4):
        parts = [torch.randn(6, generator=gen, dtype=torch.float32) for _ in range(2)]
        if plan == "clients":
            parts = [parts[0] + parts[1]]
        for task, u in zip(["all"] if plan == "clients" else ["left", "right"], parts, strict=True):
            update = ON_DEVICE[device](u)
            made.append(Row(client, task, update, float(1 + client + len(task) / 10), float(10 * (client + 1))))
    return made


def make(plan: str, weighting: str) -> AggregationPlan:
    return AggregationPlan(plan, make_weighting(weighting, **PARAMS.get(weighting, {})), make_weighting("mgda"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("weighting", SERVER_WEIGHTINGS)
def test_every_server_weighting_aggregates_on_the_device_as_on_the_cpu(plan, weighting, device):
    on_cpu, on_device = make(plan, weighting), make(plan, weighting)
    for round_ in range(2):  # the second round uses the weightings' state (histories, averages)
        expected = on_cpu(rows("cpu", plan, seed=round_))
        with preserved_determinism():  # an operation with no deterministic kernel raises here
            use_deterministic(device == "cuda-deterministic")
            got = on_device(rows(device, plan, seed=round_))
        assert on_the_device(got.direction, device), "the combined update left the device"
        torch.testing.assert_close(got.direction.cpu(), expected.direction, rtol=1e-5, atol=1e-6)
        assert got.row_weights.keys() == expected.row_weights.keys()
        for key, w in expected.row_weights.items():
            assert got.row_weights[key] == pytest.approx(w, rel=1e-5, abs=1e-7)


def test_objectives_keep_their_statistics_and_gramian_on_the_cpu():
    updates = on_accelerator(torch.randn(3, 5))
    objectives = Objectives(updates=updates, losses=on_accelerator(torch.ones(3)), num_examples=torch.ones(3))
    assert type(objectives.gramian) is torch.Tensor and objectives.gramian.dtype == F64
    assert type(objectives.losses) is torch.Tensor
    plain = updates.cpu().to(F64)
    torch.testing.assert_close(objectives.gramian, plain @ plain.T)


# -- choosing the device -----------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_server_device_cuda_without_a_gpu_is_a_clear_error():
    assert server_device("cpu").type == "cpu"
    assert server_device("auto").type == "cpu"
    with pytest.raises(ValueError, match=r"server\.device = 'cuda'.*no CUDA GPU"):
        server_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_server_device_uses_the_gpu_when_present():
    assert server_device("auto").type == "cuda" and server_device("cuda").type == "cuda"


def test_server_device_is_validated_in_the_config():
    assert load_config(None, ["server.device=auto"]).server.device == "auto"
    with pytest.raises(Exception, match="device"):
        load_config(None, ["server.device=tpu"])

