"""Launch Triton kernels through their compiled handles, skipping ``JITFunction.run``'s per-call work.

``kernel[grid](...)`` binds the arguments, builds a cache key (a string of the options), reads a few
environment knobs and then calls the compiled kernel's C launcher. At decode shapes that Python work is most
of the call. ``CachedKernel`` keeps the compiled kernel of each specialization it has seen and calls
``compiled.run``, the function that ``compiled[grid](...)`` ends in, directly: with the tensors' addresses as
ints, so that the C launcher neither calls ``data_ptr`` nor asks the driver about each pointer again (the
inputs were validated to be on the device), and with no launch metadata, which Triton builds on every launch
only for its launch hooks (while a hook is set, launches go through ``compiled[grid]``). Its key is a superset
of what Triton specializes on (tensor dtypes and 16-byte pointer alignment; integers equal to 1, divisible by
16 or beyond 32 bits; constexprs and options; the device), so a cached kernel is only ever reused for
arguments Triton would have compiled the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any

import torch

try:
    from triton import knobs as _triton_knobs
    from triton.knobs import HookChain as _HookChain
except ImportError:  # a Triton without knobs: every cached launch goes through compiled[grid]
    _triton_knobs = _HookChain = None

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# Streaming multiprocessors assumed off CUDA (persistent grids under the interpreter): an H100's or H200's
FALLBACK_SM_COUNT = 132


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``): ``triton.next_power_of_2`` without its JIT
    wrapper, which costs the launch rules about 3 us a call (config_sweep's enumeration makes millions)."""
    return 1 << max(n - 1, 0).bit_length()


def _key_and_values(args: tuple) -> tuple[tuple, list]:
    """What Triton specializes each argument on (a hashable per argument), and the arguments with each tensor
    replaced by its address: one pass, as this runs on every launch."""
    keys, values = [], []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            address = arg.data_ptr()
            keys.append((arg.dtype, address % 16 == 0))
            values.append(address)
        else:  # floats are not specialized
            keys.append((arg == 1, arg % 16 == 0, _INT32_MIN <= arg <= _INT32_MAX) if type(arg) is int
                        else type(arg))
            values.append(arg)
    return tuple(keys), values


def launch_hooks_set() -> bool:
    """Whether Triton's launch hooks (its profiler's, say) are set: then launches must build Triton's launch
    metadata and call them, which only ``compiled[grid](...)`` does."""
    if _triton_knobs is None:
        return True
    runtime = _triton_knobs.runtime
    return not all(hook is None or (type(hook) is _HookChain and not hook.calls)
                   for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


class CachedKernel:
    """A Triton kernel launched as ``CachedKernel(kernel).launch(device, grid, args, options)``.

    ``args`` are the kernel's leading non-constexpr parameters, positionally; ``options`` a tuple of
    ``(name, value)`` pairs holding every constexpr parameter and launch option (num_warps, ...). The first
    launch of a specialization goes through Triton (compiling if needed); later ones reuse its handle.
    Under ``TRITON_INTERPRET=1`` (no compiled kernels) every launch goes through Triton.
    """

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self._launchers: dict[Hashable, tuple[Any, tuple, bool]] = {}
        self._resident: dict[Hashable, int | None] = {}

    def resident_per_sm(self, device: torch.device, args: tuple, options: tuple[tuple[str, Any], ...]) -> int | None:
        """How many programs of the specialization these arguments select fit on one streaming multiprocessor
        at once, by its compiled registers, threads and shared memory (compiling it if needed); None where
        there is nothing compiled to ask (the interpreter). ``device`` must be the current device."""
        key = (device, options, _key_and_values(args)[0])
        if key not in self._resident:
            compiled = self.kernel.warmup(*args, grid=(1,), **dict(options))
            self._resident[key] = None if compiled is None else resident_programs(compiled, device)
        return self._resident[key]

    def launch(self, device: torch.device, grid: int | tuple[int, int], args: tuple,
               options: tuple[tuple[str, Any], ...]) -> None:
        """Launch ``grid`` programs (a count, or a pair for a 2-D grid) on ``device``, which must be the current
        device (the callers hold a device guard)."""
        arg_keys, values = _key_and_values(args)
        key = (device, options, arg_keys)
        entry = self._launchers.get(key)
        grid_x, grid_y = grid if isinstance(grid, tuple) else (grid, 1)
        if entry is None:
            compiled = self.kernel[(grid_x, grid_y)](*args, **dict(options))
            entry = self._constexpr_tail(compiled, len(args), dict(options))
            if entry is not None:
                self._launchers[key] = entry
            return
        compiled, tail, runs_directly = entry
        # the raw current stream, as Triton's own launch path reads it
        stream = torch._C._cuda_getCurrentRawStream(device.index)
        if runs_directly and not launch_hooks_set():
            # what compiled[grid](...) calls, minus the launch metadata and the (empty) hook chains
            compiled.run(grid_x, grid_y, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                         *values, *tail)
        else:
            compiled[(grid_x, grid_y, 1)](*args, *tail, stream=stream)

    def _constexpr_tail(self, compiled, n_args: int, options: dict[str, Any]) -> tuple[Any, tuple, bool] | None:
        """``(compiled, values of the constexpr parameters in signature order, whether compiled.run can be
        called directly)``, or None when the launch cannot be replayed from a handle (interpreter, asynchronous
        compilation, an unexpected signature)."""
        if not (hasattr(compiled, "function") and hasattr(compiled, "__getitem__")) or hasattr(compiled, "result"):
            return None
        params = getattr(self.kernel, "params", None)
        if params is None or any(p.is_constexpr for p in params[:n_args]):
            return None
        tail_names = [p.name for p in params[n_args:]]
        if not all(p.is_constexpr for p in params[n_args:]) or not set(tail_names) <= options.keys():
            return None
        runs_directly = all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata"))
        return compiled, tuple(options[name] for name in tail_names), runs_directly


# Registers are allocated per warp in units of this many (every NVIDIA GPU since sm_50), and each program
# holds this much shared memory beyond what it asks for (sm_80 and later).
_REGISTER_UNIT = 256
_SHARED_RESERVED_PER_PROGRAM = 1024


def resident_programs(compiled, device: torch.device) -> int | None:
    """Programs of a compiled Triton kernel that one streaming multiprocessor of ``device`` holds at once;
    None off CUDA or when the kernel does not say its registers."""
    if device.type != "cuda":
        return None
    compiled._init_handles()  # loads the binary; sets n_regs
    n_regs = getattr(compiled, "n_regs", None)
    if not n_regs:
        return None
    return programs_per_multiprocessor(n_regs, compiled.metadata.num_warps, compiled.metadata.shared,
                                       torch.cuda.get_device_properties(device))


def programs_per_multiprocessor(n_regs: int, num_warps: int, shared: int, props) -> int:
    """Occupancy: programs of ``num_warps`` warps, ``n_regs`` registers a thread and ``shared`` bytes of
    shared memory that fit on one multiprocessor of a device with properties ``props`` (at least 1)."""
    registers_per_warp = -(-n_regs * props.warp_size // _REGISTER_UNIT) * _REGISTER_UNIT
    by_registers = props.regs_per_multiprocessor // registers_per_warp // num_warps
    by_threads = props.max_threads_per_multi_processor // (num_warps * props.warp_size)
    by_shared = props.shared_memory_per_multiprocessor // (shared + _SHARED_RESERVED_PER_PROGRAM) if shared else 32
    return max(1, min(by_registers, by_threads, by_shared, 32))


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); ``FALLBACK_SM_COUNT`` for other devices."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return FALLBACK_SM_COUNT


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
