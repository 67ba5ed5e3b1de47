"""Run one function of untrusted, model-written Python in a throw-away jail and get its result as data.

    result = sandbox.run(source, "strategy", args=(board,), timeout_s=2.0)
    if result.ok: move = result.value     # else result.failure says why, e.g. "timeout", "rejected"

Each call starts a fresh `python -I -S` child that lives for one call: ~35 ms for a trivial function,
~45 ms for a 2048 strategy on the 2-core CPU machine (docs/benchmarks_sandbox.md). `run` never raises
for anything the code does, and returns within `timeout_s` + 2 s; it raises `SandboxError` only for
bad arguments from the caller or a sandbox that cannot lock down.

What is covered, in layers (the OS layers are the boundary; the first two are policy):
1. Static check (`source_check`): imports outside `allowed_imports`, `exec`/`eval`/`open`/`__import__`/
   `getattr`..., dunder names and private attributes are refused before anything runs.
2. Run time, inside the child: restricted builtins and an `__import__` guard that admits only the
   allowed top-level packages for every importer.
3. Namespaces (`unshare --pid --net --mount --ipc --uts`, inside a user namespace when not root): the
   code is PID 1 of its own PID namespace, so killing it kills every process it made, `setsid()`
   included; the network namespace has only a down loopback; a size-capped tmpfs becomes the root
   (`pivot_root`, old root detached): no host file is reachable by any path.
4. Privileges: as root, each call runs under its own never-used uid (no capabilities, cannot signal or
   ptrace other sandboxes or the parent, its own `RLIMIT_NPROC` count); not root, it is root only of
   its own user namespace, which maps to the caller's uid.
5. seccomp (`_seccomp.py`): no fork/exec, sockets, kill, ptrace, mounts, namespaces, io_uring.
6. rlimits: address space and writable memory (`memory_mb` above start-up each), CPU seconds, file size,
   open files, processes.
7. The parent owns the wall clock and SIGKILLs the process group (and with it the namespace); it caps
   stdout/stderr and the result, and kills the code as soon as one overflows.
8. Data only: arguments go in and the value comes out as JSON, so the code never holds the caller's
   objects; tuples arrive as lists; the result must be made of dict/list/str/int/float/bool/None.

Fallbacks, chosen once per process by `isolation()`: without `unshare` permission there are no
namespaces, so the network is blocked by seccomp only, the root is a `chroot` into a disk temp dir
(root only), and stray processes are swept by killing everything of the call's uid. Not root and no
user namespaces: only layers 1, 2, 5, 6, 7, 8 remain, and files the user can read are readable.

What is NOT covered:
- The code's value is whatever it chose to return: compute every verdict in the parent from raw outputs
  (replay 2048 moves yourself, compare kernel outputs to a reference you ran on inputs you drew),
  never trust a "passed" or a score from inside.
- Run-time escapes through attributes (`random._os`, `().__class__.__subclasses__()`) or through library
  code that evaluates strings with the real builtins (`typing.get_type_hints` on string annotations):
  layer 1 refuses the first kind, neither policy layer sees the second; both reach `os`, and then only
  layers 3-6 stop what `os` could do. Treat layers 1-2 as scoring rules, not as a wall.
- Submodules of allowed packages that the code names (`import pkg.sub`) are imported before lock-down,
  where nothing but the namespaces holds yet: allow only packages whose every submodule is safe to
  import (the stdlib defaults are). Anything imported lazily after lock-down fails: the files are gone.
- seccomp is a deny-list: a new syscall that is dangerous but not listed is allowed. The kernel is shared:
  a kernel exploit escapes every layer. Side channels (timing, caches, co-located jobs) are open.
- Denial of service inside the limits: burning the CPU for `timeout_s`, filling `memory_mb` (mapped
  memory, not RSS: there is no cgroup), writing up to `output_limit_bytes`.
- No PID namespace and no seccomp (an unknown CPU architecture without `unshare`): nothing blocks the
  network, and only a root caller can sweep leftover processes.
- GPU code in the default profile: the new root hides /dev/nvidia*, and RLIMIT_AS breaks CUDA start-up.
  `profile=GPU` (below) lifts exactly that and nothing else; on an H200 (2026-11-23) PyTorch kernels were
  checked and timed in it. CUDA must start before lock-down (the harness does it): code that first touches CUDA
  after it fails. Compiled Triton needs the harness's help too: Triton execs `ptxas` and a C compiler, which the
  jail denies, so the kernel checker's harness compiles through the driver instead (`_triton_jail`). Host RAM:
  writable private memory stays capped at `memory_mb` (RLIMIT_DATA), but shared anonymous mappings count only
  against the raised address space (64 GiB more); making one takes `mmap` or ctypes, which the import guard
  refuses. Start-up (2.5-4 s a call on an H100) is paid by every call, but calls sharing a `gate` pay it side
  by side (the kernel rewards do: `kernel_check`).

The GPU profile (`GPU`): CUDA needs (a) the NVIDIA device nodes, which are bound into the new root at their own
paths (with namespaces only: without a mount namespace a bind mount would be the host's), (b) its driver library
and the libraries the code uses loaded before the files disappear, which the caller's trusted `harness` does at
import by initialising CUDA (`_kernel_harness.warm_up_cuda`), and (c) a much larger address space, because the
driver reserves tens of GB of virtual addresses (8 GB broke CUDA start-up, 64 GB worked, DESIGN): `memory_mb` gets
64 GiB on top of the address-space cap (not of the writable-memory cap). `CUDA_VISIBLE_DEVICES` passes through,
and Triton's libdevice is copied in (`Profile.files`: its compiler reads that file when a kernel calls a libdevice
function). Everything else (namespaces, uid, seccomp, the other rlimits, the wall clock) is as in the default
profile.
"""

import dataclasses
import functools
import importlib.util
import json
import keyword
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from oss_grpo.rewards import _seccomp
from oss_grpo.rewards._child_process import ChildOutcome, supervise
from oss_grpo.rewards.source_check import check_source
from oss_grpo.rl.errors import SandboxError

log = logging.getLogger(__name__)

DEFAULT_ALLOWED_IMPORTS = frozenset({
    "math", "random", "itertools", "functools", "collections", "heapq", "bisect", "statistics",
    "operator", "copy", "typing", "string", "re", "dataclasses", "enum", "fractions", "decimal",
})
Failure = Literal["syntax", "rejected", "missing", "raised", "timeout", "killed", "exited", "output_limit",
                  "bad_result"]

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_NAMESPACE_FLAGS = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts")
_MARKERS = (b"start", b"preloaded", b"ready")  # the child's progress lines, see _sandbox_child.py
_CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a call's jail grants beyond the default one; `CPU` grants nothing, `GPU` what CUDA needs."""

    devices: tuple[str, ...] = ()
    """Character devices bound read-write into the new root at their own paths (only where namespaces work)."""
    extra_address_space_mb: int = 0
    """Address space granted on top of `memory_mb` (writable memory stays at `memory_mb`): CUDA reserves virtual
    ranges far beyond what it uses."""
    passthrough_env: tuple[str, ...] = ()
    """Variables of the caller's environment the child keeps (every other one is dropped)."""
    files: tuple[str, ...] = ()
    """Host files copied into the new root at their own paths, for code that reads them after lock-down (only where
    namespaces work; the copies are private to the call)."""


def _nvidia_devices() -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in Path("/dev").glob("nvidia*") if p.is_char_device()))


def _triton_libdevice() -> tuple[str, ...]:
    """Triton's libdevice bitcode, which its compiler reads when a kernel calls a libdevice math function."""
    spec = importlib.util.find_spec("triton")  # where it is, without importing it
    path = Path(spec.origin).parent / "backends" / "nvidia" / "lib" / "libdevice.10.bc" if spec and spec.origin else None
    return (str(path),) if path is not None and path.is_file() else ()


CPU = Profile()
"""The default jail."""
GPU = Profile(devices=_nvidia_devices(), extra_address_space_mb=64 * 1024, passthrough_env=("CUDA_VISIBLE_DEVICES",),
              files=_triton_libdevice())
"""The GPU profile (module docstring): NVIDIA device nodes, 64 GiB more address space, CUDA_VISIBLE_DEVICES, and
Triton's libdevice."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """The outcome of one call: either `ok` with a JSON-compatible `value`, or a `failure` and `error`."""

    ok: bool
    """True when the function returned a JSON-compatible value within every limit."""
    value: Any = None
    """What the function returned (tuples become lists); None when not ok."""
    error: str | None = None
    """One line for humans and logs, e.g. "ZeroDivisionError: division by zero (line 3)"."""
    failure: Failure | None = None
    """A stable category for rewards and metrics; None when ok."""
    stdout: str = ""
    """What the code printed, cut at `output_limit_bytes`."""
    stderr: str = ""
    """The code's standard error, cut at `output_limit_bytes`."""
    seconds: float = 0.0
    """Wall-clock time of the whole call, measured by the parent."""
    timed_out: bool = False
    """True when the parent's wall clock ran out and it killed the code."""
    killed_by: str | None = None
    """The signal that ended the code ("SIGKILL" for a timeout or a limit, "SIGSEGV", ...), if any."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which OS layers this machine grants; probed once per process by `isolation()`."""

    namespaces: bool
    """`unshare` made PID, network, mount, IPC and UTS namespaces (as a user namespace when not root)."""
    root: bool
    """Running as root: each call gets its own uid, and without namespaces a chroot."""
    seccomp: bool
    """The syscall filter is available for this CPU architecture."""


def _namespace_command() -> list[str]:
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    return [shutil.which("unshare") or "unshare", *user, *_NAMESPACE_FLAGS]


@functools.cache
def isolation() -> Isolation:
    """Probe the host once: namespaces are used where `unshare` works here, else the fallbacks."""
    try:
        probe = subprocess.run([*_namespace_command(), "true"], capture_output=True, timeout=10, check=False)
        namespaces = probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        namespaces = False
    if not namespaces:
        log.warning("sandbox: unshare is not permitted here; running without namespaces (see sandbox.py)")
    return Isolation(namespaces=namespaces, root=os.geteuid() == 0, seccomp=_seccomp.supported())


def run(
    source: str,
    function: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    allowed_imports: Collection[str] = DEFAULT_ALLOWED_IMPORTS,
    disk_mb: int = 16,
    output_limit_bytes: int = 64 * 1024,
    result_limit_bytes: int = 1 << 20,
    env: Mapping[str, str] | None = None,
    harness: str | None = None,
    profile: Profile = CPU,
    gate: "threading.Lock | None" = None,
) -> SandboxResult:
    """Run `function(*args, **kwargs)` defined by `source` in a fresh jail and return what happened.

    Args:
        source: Python source that defines `function` at top level (model output, untrusted).
        function: Name of the function to call.
        args, kwargs: JSON-compatible arguments; the code gets copies.
        timeout_s: Wall-clock budget of the whole call, child start-up included.
        memory_mb: Memory the code may add on top of the interpreter's start-up (address space and, separately,
            writable memory).
        allowed_imports: Top-level packages the code may import; anything outside needs the sandbox's
            paths to be importable without `site` (stdlib, or a package on the caller's `sys.path`).
        disk_mb: Size of the private working directory and the largest file the code may write.
        output_limit_bytes: Cap of stdout and of stderr each; going past it kills the code.
        result_limit_bytes: Cap of the JSON-encoded return value.
        env: Extra environment variables of the child (e.g. `TRITON_INTERPRET=1`), set before anything imports.
        harness: Trusted `module:function` imported before lock-down and called as `harness(fn, *args, **kwargs)`
            in place of `fn(*args, **kwargs)`, so a checker can draw inputs, poison outputs and run trials in the
            same process as the code (one start-up for many trials); its return value is the result. It runs
            beside the code, so whatever it returns is as forgeable as `fn`'s own value: verdicts stay in the parent.
        profile: What the jail grants beyond the default (`CPU`): `GPU` for CUDA code (module docstring).
        gate: A lock shared by calls made from several threads: each child starts up (interpreter, harness,
            preloaded modules: seconds for torch and CUDA) at once, then runs the code only while holding the lock,
            so timed code never shares the machine with another call's code. Waiting for the lock does not count
            against `timeout_s` (nor in `seconds`).

    Raises:
        SandboxError: only for bad arguments from the caller or a sandbox that cannot start.
    """
    start = time.monotonic()
    _validate(source, function, timeout_s, memory_mb, allowed_imports, disk_mb, output_limit_bytes,
              result_limit_bytes)
    _validate_extras(env, harness)
    _validate_profile(profile)
    try:
        # Through JSON and back: validates, copies, and gives the child exactly what JSON would.
        call = json.loads(json.dumps({"args": list(args), "kwargs": dict(kwargs or {})}))
    except (TypeError, ValueError, RecursionError) as e:
        raise SandboxError(f"args/kwargs must be JSON-compatible data: {e}") from e

    report = check_source(source, allowed_imports)
    early = None
    if report.syntax_error:
        early = SandboxResult(False, error=report.syntax_error, failure="syntax")
    elif report.findings:
        early = SandboxResult(False, error="; ".join(report.findings), failure="rejected")
    elif function not in report.defines:
        early = SandboxResult(False, error=f"the code defines no top-level {function!r}", failure="missing")
    if early is not None:
        return dataclasses.replace(early, seconds=time.monotonic() - start)

    iso = isolation()
    uid = (1 << 20) + secrets.randbelow(1 << 29) if iso.root else None  # a uid nobody else uses
    payload = {
        "source": source, "function": function, **call, "allowed_imports": sorted(allowed_imports),
        "preload": list(report.imports), "sys_path": [p for p in sys.path if p and os.path.exists(p)],
        "namespaces": iso.namespaces, "privileged": iso.root, "uid": uid,
        "seccomp": _seccomp.build_filter() if iso.seccomp else None,
        "memory_mb": memory_mb, "disk_mb": disk_mb, "cpu_s": math.ceil(timeout_s) + 1,
        "result_items": 1_000_000, "result_limit": result_limit_bytes, "harness": harness,
        "package_root": str(Path(__file__).resolve().parents[1]),
        "devices": list(profile.devices) if iso.namespaces else [],
        "files": list(profile.files) if iso.namespaces else [],
        "extra_address_space_mb": profile.extra_address_space_mb,
    }
    cmd = [sys.executable, "-I", "-S", "-B", str(_CHILD)]
    if iso.namespaces:
        cmd = [*_namespace_command(), *cmd]
    with tempfile.TemporaryDirectory(prefix="oss-grpo-sandbox-") as workdir:
        if uid is not None and not iso.namespaces:
            os.chown(workdir, uid, uid)  # with namespaces a tmpfs owned by uid is mounted over it instead
        # Only without a PID namespace and without seccomp can the code leave processes behind.
        sweep_uid = uid if not iso.namespaces and not iso.seccomp else None
        passed = {k: os.environ[k] for k in profile.passthrough_env if k in os.environ}
        out = supervise(cmd, {**passed, **(env or {}), **_CHILD_ENV}, payload, workdir, start + timeout_s,
                        output_limit_bytes, result_limit_bytes, sweep_uid, gate)
    return _classify(out, timeout_s, output_limit_bytes, result_limit_bytes, time.monotonic() - start - out.queued_s)


def _validate(source: str, function: str, timeout_s: float, memory_mb: int, allowed_imports: Collection[str],
              *sizes: int) -> None:
    if not isinstance(source, str):
        raise SandboxError(f"source must be str, got {type(source).__name__}")
    if not isinstance(function, str) or not function.isidentifier() or keyword.iskeyword(function):
        raise SandboxError(f"function must be a Python identifier, got {function!r}")
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 3600:
        raise SandboxError(f"timeout_s={timeout_s!r}: must be a number of seconds in (0, 3600]")
    if not isinstance(memory_mb, int) or memory_mb < 16:
        raise SandboxError(f"memory_mb={memory_mb!r}: must be an int of at least 16")
    if isinstance(allowed_imports, str) or not all(isinstance(m, str) for m in allowed_imports):
        raise SandboxError(f"allowed_imports={allowed_imports!r}: must be a collection of module names")
    if not all(isinstance(n, int) and n > 0 for n in sizes):
        raise SandboxError(f"disk_mb, output_limit_bytes and result_limit_bytes must be positive ints: {sizes}")


def _validate_extras(env: Mapping[str, str] | None, harness: str | None) -> None:
    if env is not None and not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                                   for k, v in env.items()):
        raise SandboxError(f"env={env!r}: must map variable names to str values")
    if harness is not None:
        module, sep, fn = harness.partition(":") if isinstance(harness, str) else ("", "", "")
        if not sep or not fn.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
            raise SandboxError(f"harness={harness!r}: must be 'package.module:function'")


def _validate_profile(profile: Profile) -> None:
    if not isinstance(profile, Profile):
        raise SandboxError(f"profile={profile!r}: must be a sandbox.Profile (sandbox.CPU or sandbox.GPU)")
    for device in profile.devices:
        path = Path(device)
        if not path.is_absolute() or ".." in path.parts or not path.is_char_device():
            raise SandboxError(f"profile.devices: {device!r} is not an absolute path to a character device")
    for file in profile.files:
        path = Path(file)
        if not path.is_absolute() or ".." in path.parts or not path.is_file():
            raise SandboxError(f"profile.files: {file!r} is not an absolute path to a regular file")
    if not isinstance(profile.extra_address_space_mb, int) or profile.extra_address_space_mb < 0:
        raise SandboxError(f"profile.extra_address_space_mb={profile.extra_address_space_mb!r}: must be an int >= 0")


def _classify(out: ChildOutcome, timeout_s: float, output_limit: int, result_limit: int,
              seconds: float) -> SandboxResult:
    """Turn what the parent saw into a result; only a child that never got ready is a SandboxError."""
    stdout, stderr = out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
    lines = out.channel.split(b"\n")[:-1]  # a line counts once its newline has arrived
    stage = 0  # markers seen, in order: 0 never started, 1 preloading, 2 locking down, 3 code running
    while stage < len(_MARKERS) and stage < len(lines) and lines[stage] == _MARKERS[stage]:
        stage += 1
    after = lines[stage] if stage < len(lines) else b""
    if stage < len(_MARKERS) and after.startswith(b'{"setup_error":'):
        raise SandboxError(f"the sandbox could not lock down: {json.loads(after)['setup_error']}")
    signame = _signal_name(out.returncode)

    def fail(failure: Failure, error: str, killed_by: str | None = None) -> SandboxResult:
        return SandboxResult(False, None, error, failure, stdout, stderr, seconds, out.timed_out, killed_by)

    if out.timed_out:
        when = "" if stage == len(_MARKERS) else " (still starting up)"
        return fail("timeout", f"TimeoutError: no result within {timeout_s:g} s{when}; killed", "SIGKILL")
    if out.overflow in ("stdout", "stderr"):
        return fail("output_limit", f"OutputLimit: wrote more than {output_limit} bytes to {out.overflow}; killed",
                    "SIGKILL")
    if out.overflow == "result":
        return fail("bad_result", f"ResultTooLarge: the result is over {result_limit} bytes as JSON", "SIGKILL")
    if stage in (0, 2):
        what = "started" if stage == 0 else "locked down"
        raise SandboxError(f"the sandbox child ended ({signame or out.returncode}) before it {what}: "
                           f"{stderr[-500:].strip()}")
    line = after
    if stage == 1:  # importing the modules the code named killed the process: the code's doing
        how = f"died from {signame}" if signame else f"ended with status {out.returncode}"
        return fail("killed" if signame else "exited", f"ImportCrash: the process {how} while importing the "
                    "allowed modules the code names", signame)
    if not line:
        if signame:
            return fail("killed", f"Killed: the process died from {signame}", signame)
        return fail("exited", f"Exited: the process ended with status {out.returncode} before returning")
    if len(line) > result_limit:
        return fail("bad_result", f"ResultTooLarge: the result is over {result_limit} bytes as JSON")
    try:
        report = json.loads(line)
        if report["ok"] is True:
            return SandboxResult(True, report["value"], None, None, stdout, stderr, seconds)
        failure = report["failure"] if report["failure"] in Failure.__args__ else "raised"
        return fail(failure, str(report["error"])[:4000])
    except (ValueError, RecursionError, KeyError, TypeError) as e:
        return fail("bad_result", f"BadResult: unreadable result line ({type(e).__name__}: {str(e)[:200]})")


def _signal_name(returncode: int | None) -> str | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
