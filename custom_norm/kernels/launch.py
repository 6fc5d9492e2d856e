"""Launch Triton kernels through their compiled handles, skipping ``JITFunction.run``'s per-call work.

``kernel[grid](...)`` binds the arguments, builds a cache key (a string of the options), reads a few
environment knobs and then calls the compiled kernel's C launcher. At decode shapes that Python work is most
of the call. ``CachedKernel`` keeps the compiled kernel of each specialization it has seen and calls its
launcher directly. Its key is a superset of what Triton specializes on (tensor dtypes and 16-byte pointer
alignment; integers equal to 1, divisible by 16 or beyond 32 bits; constexprs and options; the device), so a
cached kernel is only ever reused for arguments Triton would have compiled the same way.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _arg_key(arg: Any) -> Hashable:
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if type(arg) is int:
        return arg == 1, arg % 16 == 0, _INT32_MIN <= arg <= _INT32_MAX
    return type(arg)  # floats are not specialized


class CachedKernel:
    """A Triton kernel launched as ``CachedKernel(kernel).launch(device, grid, args, options)``.

    ``args`` are the kernel's leading non-constexpr parameters, positionally; ``options`` a tuple of
    ``(name, value)`` pairs holding every constexpr parameter and launch option (num_warps, ...). The first
    launch of a specialization goes through Triton (compiling if needed); later ones reuse its handle.
    Under ``TRITON_INTERPRET=1`` (no compiled kernels) every launch goes through Triton.
    """

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self._launchers: dict[Hashable, tuple[Any, tuple]] = {}

    def launch(self, device: torch.device, grid: int, args: tuple, options: tuple[tuple[str, Any], ...]) -> None:
        """Launch on ``device``, which must be the current device (the callers hold a device guard)."""
        key = (device, options, tuple(map(_arg_key, args)))
        entry = self._launchers.get(key)
        if entry is None:
            compiled = self.kernel[(grid,)](*args, **dict(options))
            entry = self._constexpr_tail(compiled, len(args), dict(options))
            if entry is not None:
                self._launchers[key] = entry
            return
        compiled, tail = entry
        # the raw current stream, as Triton's own launch path reads it
        compiled[(grid, 1, 1)](*args, *tail, stream=torch._C._cuda_getCurrentRawStream(device.index))

    def _constexpr_tail(self, compiled, n_args: int, options: dict[str, Any]) -> tuple[Any, tuple] | None:
        """``(compiled, values of the constexpr parameters in signature order)``, or None when the launch
        cannot be replayed from a handle (interpreter, asynchronous compilation, an unexpected signature)."""
        if not (hasattr(compiled, "function") and hasattr(compiled, "__getitem__")) or hasattr(compiled, "result"):
            return None
        params = getattr(self.kernel, "params", None)
        if params is None or any(p.is_constexpr for p in params[:n_args]):
            return None
        tail_names = [p.name for p in params[n_args:]]
        if not all(p.is_constexpr for p in params[n_args:]) or not set(tail_names) <= options.keys():
            return None
        return compiled, tuple(options[name] for name in tail_names)
