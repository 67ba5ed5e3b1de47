"""Compiled Triton inside the sandbox's GPU jail, where nothing may be executed and no host file can be opened.

Triton compiles a kernel at its first launch and, in Triton 3.6 (the GPU image's), leaves the process twice on the
way: it runs `ptxas` (PTX -> cubin) and a C compiler (a small launcher extension for each kernel signature). The
jail's seccomp filter denies exec and its new root holds no host files, so both fail there (seen on an H200,
2026-11-23). `install`, called by the trusted harness before lock-down, replaces exactly those two steps with
in-process equivalents; everything else is Triton's own pipeline:

- PTX to machine code: the CUDA driver compiles PTX itself when `cuModuleLoadData` is given PTX text (its JIT lives
  in a driver library that loads at the first such call, which is why the harness compiles one kernel this way
  before lock-down). Triton's documented `knobs.runtime.add_stages_inspection_hook` swaps its "cubin" stage for one
  that hands the PTX on.
- The launcher: `Launcher` packs the arguments as Triton's generated C does and calls `cuLaunchKernel` through
  ctypes. Newer Triton ships one generic launcher and compiles none, so it is installed only where the driver module
  still generates C launchers (`make_launcher`).

Compiled kernels go to a private cache directory: their "cubin" is PTX, which must never reach the host's cache.
What a kernel cannot do here: thread-block clusters (`num_ctas` > 1), cooperative or PDL launches, and tensor
descriptors (TMA); it gets a RuntimeError naming the feature, which the checker scores as a failed trial. ctypes is
reachable from this module's objects by reflection; the policy layers refuse the names, and the OS layers (sandbox.py)
hold either way, as for everything else in the child.
"""

import ctypes
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import triton
from triton.backends.nvidia import driver as nvidia_driver

_CU_POINTER_ATTRIBUTE_DEVICE_POINTER = 3  # cuda.h, enum CUpointer_attribute
_INTS = {"i1": ctypes.c_int8, "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32,
         "i64": ctypes.c_int64, "u1": ctypes.c_uint8, "u8": ctypes.c_uint8, "u16": ctypes.c_uint16,
         "u32": ctypes.c_uint32, "u64": ctypes.c_uint64}


def _fp32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


# How Triton's C launcher passes a float argument: as the bits of the parameter's own type (bf16 truncates).
_FLOATS: dict[str, Callable[[float], ctypes._SimpleCData]] = {
    "fp16": lambda v: ctypes.c_uint16(struct.unpack("<H", struct.pack("<e", v))[0]),
    "bf16": lambda v: ctypes.c_uint16(_fp32_bits(v) >> 16),
    "fp32": lambda v: ctypes.c_uint32(_fp32_bits(v)),
    "f32": lambda v: ctypes.c_uint32(_fp32_bits(v)),
    "fp64": lambda v: ctypes.c_uint64(struct.unpack("<Q", struct.pack("<d", v))[0]),
}


def flatten(items: Iterable[Any]) -> list[Any]:
    """Tuples of arguments (and of their types) unpacked in order, as Triton's launcher reads them."""
    out = []
    for item in items:
        out.extend(flatten(item) if isinstance(item, tuple) else [item])
    return out


def kernel_params(types: Sequence[str], values: Sequence[Any],
                  address: Callable[[Any, int], int]) -> list[ctypes._SimpleCData]:
    """The kernel's parameters as C values, in order: constexprs dropped, pointers through `address(value, index)`
    (an int, None or a tensor), integers in their C type, floats as their bits."""
    if len(types) != len(values):
        raise TypeError(f"the kernel takes {len(types)} arguments, {len(values)} were given")
    params = []
    for i, (ty, value) in enumerate(zip(types, values, strict=True)):
        if ty == "constexpr":
            continue
        if ty.startswith("*"):
            params.append(ctypes.c_uint64(address(value, i)))
        elif ty in _INTS:
            params.append(_INTS[ty](value))
        elif ty in _FLOATS:
            params.append(_FLOATS[ty](value))
        else:
            raise RuntimeError(f"argument {i} of type {ty!r} is not supported by the sandbox's Triton launcher")
    return params


class _Cuda:
    """The driver calls the launcher needs, bound before lock-down (libcuda is a file)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libcuda.so.1")
        self.launch = lib.cuLaunchKernel
        self.launch.argtypes = [ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p]
        self.pointer_attribute = lib.cuPointerGetAttribute
        self.pointer_attribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
        self.error_string = lib.cuGetErrorString
        self.error_string.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def check(self, status: int, what: str) -> None:
        if status != 0:
            text = ctypes.c_char_p()
            self.error_string(status, ctypes.byref(text))
            raise RuntimeError(f"Triton Error [CUDA]: {what}: {(text.value or b'unknown error').decode()}")

    def address(self, value: Any, index: int) -> int:
        """A device address from a pointer argument; a host tensor is refused as Triton's own launcher does."""
        if value is None:
            return 0
        ptr = value if isinstance(value, int) else value.data_ptr()
        if not ptr or isinstance(value, int):
            return ptr
        device_ptr = ctypes.c_uint64()
        if self.pointer_attribute(ctypes.byref(device_ptr), _CU_POINTER_ATTRIBUTE_DEVICE_POINTER, ptr) != 0:
            raise ValueError(f"Pointer argument (at {index}) cannot be accessed from Triton (cpu tensor?)")
        return device_ptr.value


class Launcher(nvidia_driver.CudaLauncher):
    """Triton 3.6's `CudaLauncher` (its `__call__` allocates the scratch buffers), with a ctypes launch in place of
    the C extension its `__init__` compiles."""

    cuda: _Cuda | None = None  # set by install

    def __init__(self, src: Any, metadata: Any) -> None:  # the attributes CudaLauncher.__init__ sets, but `launch`
        types = flatten(src.signature.values())
        if any(not isinstance(t, str) or t.startswith("tensordesc") or t == "nvTmaDesc" for t in types):
            raise RuntimeError("tensor descriptors (TMA) are not supported by the sandbox's Triton launcher")
        self.types = types
        self.num_ctas = getattr(metadata, "num_ctas", 1)
        self.launch = self._launch
        self.global_scratch_size = metadata.global_scratch_size
        self.global_scratch_align = metadata.global_scratch_align
        self.profile_scratch_size = metadata.profile_scratch_size
        self.profile_scratch_align = metadata.profile_scratch_align
        self.launch_cooperative_grid = metadata.launch_cooperative_grid
        self.launch_pdl = metadata.launch_pdl

    def _launch(self, grid_x: int, grid_y: int, grid_z: int, stream: int, function: int, cooperative: bool,
                pdl: bool, global_scratch: Any, profile_scratch: Any, kernel_metadata: tuple[int, int, int],
                launch_metadata: Any, enter_hook: Any, exit_hook: Any, *args: Any) -> None:
        num_warps, num_ctas, shared = kernel_metadata
        if num_ctas != 1 or cooperative or pdl:
            raise RuntimeError("thread-block clusters (num_ctas > 1), cooperative and PDL launches are not supported "
                               "by the sandbox's Triton launcher")
        if enter_hook is not None:
            enter_hook(launch_metadata)
        cuda = self.cuda
        params = [*kernel_params(self.types, flatten(args), cuda.address),
                  ctypes.c_uint64(cuda.address(global_scratch, -1)), ctypes.c_uint64(cuda.address(profile_scratch, -1))]
        pointers = (ctypes.c_void_p * len(params))(*[ctypes.addressof(p) for p in params])
        if grid_x * grid_y * grid_z > 0:
            cuda.check(cuda.launch(function, grid_x, grid_y, grid_z, 32 * num_warps, 1, 1, shared, stream, pointers,
                                   None), "cuLaunchKernel")
        if exit_hook is not None:
            exit_hook(launch_metadata)


def _ptx_to_the_driver(backend: Any, stages: dict, options: Any, language: Any, capability: int) -> None:
    """Triton's stages hook: the "cubin" stage returns the PTX (NUL-terminated, as `cuModuleLoadData` reads text)."""
    stages["cubin"] = lambda src, metadata: src.encode() + b"\0"


def install(cache_dir: str) -> None:
    """Make this process compile and launch Triton kernels without exec and without host files (module docstring).
    Call before lock-down, then compile one kernel so the driver's JIT library and Triton's lazy imports load."""
    triton.knobs.cache.dir = cache_dir
    triton.knobs.runtime.add_stages_inspection_hook = _ptx_to_the_driver
    if hasattr(nvidia_driver, "make_launcher"):  # Triton <= 3.6: a C launcher per signature
        Launcher.cuda = _Cuda()
        triton.runtime.driver.active.launcher_cls = Launcher
