"""A stand-in accelerator for a CPU-only build: tensors that report the ``meta`` device but hold real
CPU values, with CUDA's rules for mixing devices checked on every op.

Code written for a GPU builds its tensors on ``some_tensor.device``; one that forgets (a CPU
``torch.Generator``, a bare ``torch.tensor(...)``) makes a CPU tensor, and CUDA refuses to mix the
two: ``cpu_tensor[cuda_indices]``, ``cuda + cpu`` (unless the CPU side is a 0-dim scalar),
``torch.rand(..., device="cuda", generator=cpu_generator)``. A CPU-only CI has no second device
that computes: plain ``meta`` tensors hold no values (``nonzero`` and ``.item()`` refuse) and let
``cpu_tensor[meta_indices]`` through, and FakeTensorMode refuses ``device="cuda"``. Here a tensor
on the stand-in is a CPU tensor wrapped in a subclass whose device is ``meta`` (a wrapper claiming
``cuda``, ``xpu`` or ``mps`` fails on a CPU-only build as soon as an op runs); ``on_stand_in()``
turns ``device="meta"`` in factory calls into such tensors, and every op refuses the mixes CUDA
refuses, with :class:`DeviceMixError`.

What it does not model: CUDA-only APIs (``torch.cuda.*``), the ``device.type == "cuda"`` branches
(the stand-in's type is ``meta``: the code takes its non-CPU, non-CUDA branches), and an enabled
``torch.autocast`` (none exists for ``meta``; a disabled one is let through as the no-op it is).
The rules are CUDA's for the ops this project uses (TensorIterator ops take 0-dim CPU scalars;
indexing takes CPU indices into a device tensor, never device indices into a CPU one; copies cross
devices); every other op must see one device.
"""

from __future__ import annotations

import contextlib

import torch
import torch._dynamo  # noqa: F401  (a dispatch mode imports it on first use; not under our function mode)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

STAND_IN = torch.device("meta")

aten = torch.ops.aten
# copies may cross devices; the output's device is the op's ``device`` argument (or the source's)
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
# advanced indexing: a device tensor takes CPU indices, a CPU tensor takes no device indices
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default,
             aten._unsafe_index.Tensor}
_SCALAR_RESULT = {aten._local_scalar_dense.default}


class DeviceMixError(RuntimeError):
    """An op got tensors on the CPU and on the (stand-in) accelerator where CUDA would refuse."""


class StandInTensor(torch.Tensor):
    """A CPU tensor (``value``) that says it lives on the stand-in device."""

    value: torch.Tensor

    @staticmethod
    def __new__(cls, value: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, value.shape, strides=value.stride(), storage_offset=value.storage_offset(), dtype=value.dtype,
            layout=value.layout, device=STAND_IN, requires_grad=value.requires_grad,
        )

    def __init__(self, value: torch.Tensor):
        self.value = value

    def __repr__(self):
        return f"StandInTensor({self.value!r})"

    # what CUDA tensors answer and wrapper subclasses refuse by default
    def tolist(self):
        return self.value.tolist()

    def numpy(self, *args, **kwargs):
        raise DeviceMixError("numpy() of a tensor on the accelerator: CUDA refuses it too; call .cpu() first")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _is_stand_in(value) -> bool:
    return isinstance(value, StandInTensor)


def _describe(value) -> str:
    where = "accelerator" if _is_stand_in(value) else str(value.device)
    return f"{where} {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"


def _check(func, args, kwargs) -> None:
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        if not _is_stand_in(tensor) and tensor.device.type != "cpu":
            raise DeviceMixError(f"{func}: a plain {tensor.device} tensor reached the stand-in (a factory it missed)")
    if func in _COPIES:
        return
    on_device = [t for t in tensors if _is_stand_in(t)]
    if func in _INDEXING:
        indexed, indices = args[0], [i for i in args[1] if i is not None]
        if not _is_stand_in(indexed) and any(_is_stand_in(i) for i in indices):
            raise DeviceMixError(
                f"{func}: a CPU tensor {_describe(indexed)} indexed with accelerator indices "
                f"({', '.join(_describe(i) for i in indices)}); CUDA: indices should be either on cpu or on the "
                "same device as the indexed tensor (cpu)"
            )
        # the indices may stay on the CPU; the rest (the values put) follows the common rule
        tensors = [t for t in tensors if not any(t is i for i in indices)]
    if not on_device:
        device = kwargs.get("device")
        generator = kwargs.get("generator")
        if device is not None and torch.device(device) == STAND_IN and generator is not None and generator.device.type == "cpu":
            raise DeviceMixError(f"{func}: a CPU generator drawing on the accelerator; CUDA: expected a 'cuda' generator")
        return
    generator = kwargs.get("generator")
    if generator is not None and generator.device.type == "cpu":
        raise DeviceMixError(f"{func}: a CPU generator drawing into an accelerator tensor; CUDA: expected a 'cuda' generator")
    host = [t for t in tensors if not _is_stand_in(t) and t.dim() > 0]
    if host:
        raise DeviceMixError(
            f"{func}: tensors on the accelerator and the CPU in one op: {', '.join(_describe(t) for t in tensors)}; "
            "CUDA: Expected all tensors to be on the same device"
        )


def _run(func, args, kwargs):
    _check(func, args, kwargs)
    wrappers = {id(t.value): t for t in tree_flatten((args, kwargs))[0] if _is_stand_in(t)}
    device = kwargs.get("device")
    if device is not None:
        to_stand_in = torch.device(device) == STAND_IN
        if to_stand_in:
            kwargs = {**kwargs, "device": torch.device("cpu")}
    else:
        # no device argument: the output is where the inputs are
        to_stand_in = bool(wrappers)
    out = func(*tree_map(lambda t: t.value if _is_stand_in(t) else t, args),
               **tree_map(lambda t: t.value if _is_stand_in(t) else t, kwargs))
    if func in _SCALAR_RESULT or not to_stand_in:
        return out

    def wrap(value):
        if not isinstance(value, torch.Tensor):
            return value
        known = wrappers.get(id(value))  # an in-place op hands back its input
        return known if known is not None else StandInTensor(value)

    return tree_map(wrap, out)


class _Factories(TorchDispatchMode):
    """Factory ops asked for the stand-in device (torch.zeros(..., device="meta")) and the CPU
    tensors that travel to it (.to("meta")) become StandInTensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _Constructors(TorchFunctionMode):
    """torch.tensor / as_tensor with a device build on the CPU and copy below the dispatcher,
    out of a dispatch mode's sight: build them on the CPU here, then move them through it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]) == STAND_IN:
            return func(*args, **{**kwargs, "device": "cpu"}).to(STAND_IN)
        return func(*args, **kwargs)


def _autocast_off_on_stand_in(autocast):
    """torch.autocast that takes the stand-in when it is disabled (a no-op); enabled, it refuses."""
    def make(device_type, *args, enabled=True, **kwargs):
        if device_type == STAND_IN.type:
            if enabled:
                raise DeviceMixError("autocast on the stand-in device is not modelled: test in fp32")
            return contextlib.nullcontext()
        return autocast(device_type, *args, enabled=enabled, **kwargs)

    return make


def _autocast_enabled_off_on_stand_in(is_autocast_enabled):
    def enabled(*device_type):
        return False if device_type == (STAND_IN.type,) else is_autocast_enabled(*device_type)

    return enabled


@contextlib.contextmanager
def on_stand_in():
    """Inside: ``device="meta"`` (STAND_IN) makes StandInTensors, and every op checks CUDA's device rules."""
    autocast, is_autocast_enabled = torch.autocast, torch.is_autocast_enabled
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.autocast = _autocast_off_on_stand_in(autocast)
    torch.is_autocast_enabled = _autocast_enabled_off_on_stand_in(is_autocast_enabled)
    # module.to(STAND_IN) keeps each parameter object (as .to("cuda") does), so tied weights stay tied
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with _Constructors(), _Factories():
            yield
    finally:
        torch.autocast, torch.is_autocast_enabled = autocast, is_autocast_enabled
        torch.__future__.set_swap_module_params_on_conversion(swap)
