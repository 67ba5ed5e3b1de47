"""The sandbox child: set up the jail, lock it, run one function of untrusted code, write one JSON line.

Run by `sandbox.py` as `python -I -S _sandbox_child.py` (inside `unshare` where the host allows), never
imported by the trainer, so it is stdlib-only, and it imports only builtin modules and ctypes: start-up
is most of a call's cost. Protocol: the parent writes a `marshal`led payload on stdin (trusted data:
marshal is never used on anything the code produced); the child writes to the file descriptor
`payload["result_fd"]` the lines `start`, then `preloaded` once the allowed modules the code names are
imported (and, when `payload["gate_fd"]` is set, waits for one byte on it: its turn among gated calls), then
either `{"setup_error": ...}` (the sandbox is broken: the parent raises SandboxError) or
the line `ready`, then runs the code and writes one JSON line
`{"ok": true, "value": ...}` or `{"ok": false, "failure": ..., "error": ...}`. With a `harness` (trusted
checker code named by the parent, imported before the code's modules), the child calls `harness(fn, ...)`. It encodes that JSON itself
(exact types, bounded depth and size) rather than importing `json`, which costs more than the rest of
the lock-down together.

Everything the untrusted code could forge (that line, its stdout) it could also have produced by
returning a value, so the parent trusts none of it beyond "this is what the code returned"; the markers
are written before the code starts, so the code cannot fake a setup error.

Order of the lock-down, each step needing the privileges the next one drops:
preload allowed modules -> private tmpfs as the new root (pivot_root; chroot where there are no
namespaces) -> rlimits -> drop to the parent-chosen unique uid -> seccomp -> restricted builtins
and the import guard.
"""

import builtins
import ctypes
import marshal
import math
import os
import resource
import sys

_MNT_DETACH = 2
_MS_BIND = 4096
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_MAX_DEPTH = 100
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {ord('"'): '\\"', ord("\\"): "\\\\"}
_NR_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# Builtins the untrusted code does not get (source_check forbids the names too; this is the run-time half).
_REMOVED_BUILTINS = ("open", "exec", "eval", "compile", "input", "breakpoint", "globals", "locals", "vars",
                     "getattr", "setattr", "delattr", "help", "exit", "quit")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        raise OSError(ctypes.get_errno(), f"{name}{args} failed: {os.strerror(ctypes.get_errno())}")


def _new_root(payload: dict) -> None:
    """Make the private work dir the whole filesystem: nothing of the host is reachable by path."""
    uid, disk_mb = payload["uid"], payload["disk_mb"]
    if payload["namespaces"]:
        # We are in a fresh mount namespace (unshare made propagation private), so nothing leaks out.
        opts = f"size={disk_mb}m,nr_inodes=4096,mode=0700" + (f",uid={uid},gid={uid}" if uid is not None else "")
        _libc_call("mount", b"tmpfs", b".", b"tmpfs", 0, opts.encode())
        os.chdir(os.getcwd())  # step onto the new mount rather than the directory under it
        os.mkdir(".old_root")
        for device in payload["devices"]:  # the GPU profile: the device nodes, at their own paths
            target = "." + device
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))  # a file to mount the node over
            _libc_call("mount", device.encode(), target.encode(), None, _MS_BIND, None)
        for path in payload["files"]:  # the profile's host files, copied: the new root is private
            target = "." + path
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(path, "rb") as source, open(target, "wb") as copy:
                copy.write(source.read())
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(_NR_PIVOT_ROOT[os.uname().machine], b".", b".old_root") != 0:
            raise OSError(ctypes.get_errno(), "pivot_root failed")
        os.chdir("/")
        _libc_call("umount2", b"/.old_root", _MNT_DETACH)
        os.rmdir("/.old_root")
    elif payload["privileged"]:
        os.chroot(".")  # weaker than pivot_root, but unescapable once root is dropped and seccomp is on
        os.chdir("/")


def _mapped_bytes() -> tuple[int, int]:
    """(all mapped, writable private mapped) bytes: statm's size and data fields."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return int(fields[0]) * resource.getpagesize(), int(fields[5]) * resource.getpagesize()


def _limit(payload: dict, mapped: tuple[int, int]) -> None:
    """Hard rlimits; the memory caps count from what start-up and preloads already mapped.

    Two caps: the address space (`memory_mb` plus the profile's extra, which CUDA's reserved ranges need) and the
    writable private memory (RLIMIT_DATA, `memory_mb` alone), which is what allocating actually takes. CUDA reserves
    its ranges without write access, so under the GPU profile the data cap still holds host RAM to `memory_mb`."""
    limits = {
        resource.RLIMIT_AS: mapped[0] + (payload["memory_mb"] + payload["extra_address_space_mb"]) * 2**20,
        resource.RLIMIT_DATA: mapped[1] + payload["memory_mb"] * 2**20,
        resource.RLIMIT_CPU: payload["cpu_s"],
        resource.RLIMIT_FSIZE: payload["disk_mb"] * 2**20,
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
    }
    if payload["uid"] is not None:
        # Counted per uid, so only meaningful with our own uid (RLIMIT_NPROC is not enforced for root).
        limits[resource.RLIMIT_NPROC] = 64
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def _drop_privileges(uid: int | None) -> None:
    if uid is None:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # capabilities go with uid 0; no_new_privs (seccomp) keeps them gone


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(program: bytes) -> None:
    """Install the BPF program `_seccomp.build_filter` made in the parent (8 bytes per instruction)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    # no_new_privs: required for the filter, and keeps setuid binaries from regaining root.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"installing the seccomp filter failed: {os.strerror(ctypes.get_errno())}")


def _import_guard(allowed: frozenset[str], real_import: object) -> object:
    """An `__import__` that admits only allowed top-level packages, for every caller after lock-down.

    The code can call it with anything, so it decides on exact `str`s it copied out once, and hands the
    real import only those: a mapping that answers `__package__` differently on the second read, or a
    `str` subclass with its own `rsplit`, gets no say in what is imported.
    """
    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):  # builtin's names
        fromlist = tuple(fromlist or ())
        if type(name) is not str or type(level) is not int or level < 0 or \
                any(type(x) is not str for x in fromlist):
            raise ImportError("__import__ called with non-str names in the sandbox")
        package = None
        if level:
            package = globals.get("__package__") if type(globals) is dict else None
            if type(package) is not str or not package:
                raise ImportError("relative import without a real package in the sandbox")
        full = name if not level else (package.rsplit(".", level - 1)[0] + (f".{name}" if name else ""))
        if full.partition(".")[0] not in allowed:
            raise ImportError(f"import of {full.partition('.')[0]!r} is not allowed in the sandbox")
        return real_import(name, {"__package__": package} if level else None, None, fromlist, level)
    return guarded_import


def _to_json(value: object, budget: list[int], depth: int = 0) -> str:
    """JSON text of exact JSON types only, so no subclass method of the code runs while encoding."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("the result has too many items")
    if depth > _MAX_DEPTH:
        raise ValueError(f"the result is nested deeper than {_MAX_DEPTH} levels (or contains itself)")
    kind = type(value)
    if kind is str:
        return '"' + value.translate(_JSON_ESCAPES) + '"'  # lone surrogates: escaped at encode time
    if value is None or kind is bool:
        return {None: "null", True: "true", False: "false"}[value]
    if kind is int:
        return int.__repr__(value)  # ValueError past the 4300-digit limit
    if kind is float:
        if not math.isfinite(value):  # spelled as Python's json spells them
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return float.__repr__(value)
    if kind is list or kind is tuple:
        return "[" + ",".join(_to_json(v, budget, depth + 1) for v in value) + "]"
    if kind is dict:
        parts = []
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"a dict key of type {type(k).__name__} at depth {depth}: JSON keys must be str")
            parts.append(_to_json(k, budget, depth + 1) + ":" + _to_json(v, budget, depth + 1))
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"an item of type {kind.__name__} at depth {depth} is not JSON-compatible")


def _report(failure: str | None, error: str = "", value_json: str = "") -> bytes:
    if failure is None:
        text = '{"ok":true,"value":' + value_json + "}"
    else:
        text = '{"ok":false,"failure":' + _to_json(failure, [2]) + ',"error":' + _to_json(error, [2]) + "}"
    return text.encode("utf-8", "backslashreplace") + b"\n"  # a lone surrogate becomes a JSON \uXXXX escape


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:  # a hostile __str__ must not take the report down with it
        text = f"{type(exc).__name__}: <unprintable>"
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<sandbox>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return (text[:2000] + (f" (line {line})" if line else "")).replace("\n", " ")


def _run_untrusted(payload: dict) -> bytes:
    """Exec the source with restricted builtins, call the function, and encode the report line."""
    allowed = frozenset(payload["allowed_imports"])
    restricted = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    restricted["__import__"] = builtins.__import__ = _import_guard(allowed, builtins.__import__)
    scope = {"__name__": "__sandbox__", "__builtins__": restricted}
    cache = getattr(sys.modules.get("linecache"), "cache", None)  # loaded with inspect, e.g. by torch
    if cache is not None:  # lets inspect.getsource read the code: Triton's @jit needs the kernel's source text
        source = payload["source"]
        cache["<sandbox>"] = (len(source), None, source.splitlines(True), "<sandbox>")
    try:
        exec(compile(payload["source"], "<sandbox>", "exec"), scope)  # the point of the sandbox
        fn = scope.get(payload["function"])
        if not callable(fn):
            return _report("missing", f"no function named {payload['function']!r}")
        call = payload["harness_fn"] or fn
        value = call(*((fn,) if payload["harness_fn"] else ()), *payload["args"], **payload["kwargs"])
    except BaseException as e:  # SystemExit, KeyboardInterrupt, custom BaseException: all a failure
        return _report("raised", _describe(e))
    try:
        text = _to_json(value, [payload["result_items"]])
    except (TypeError, ValueError, RecursionError) as e:
        return _report("bad_result", f"{type(e).__name__}: {e}")
    if len(text) > payload["result_limit"]:
        return _report("bad_result", f"ResultTooLarge: the result is over {payload['result_limit']} bytes as JSON")
    return _report(None, value_json=text)


def _import_oss_grpo(root: str) -> None:
    """Import our package from its folder. An editable install reaches it through a finder that `-S` leaves out,
    and that folder is the repo root itself (pyproject package-dir), which no `sys.path` entry can name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("oss_grpo", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    package = importlib.util.module_from_spec(spec)
    sys.modules["oss_grpo"] = package
    spec.loader.exec_module(package)


def main() -> None:
    payload = marshal.loads(sys.stdin.buffer.read())
    fd = payload["result_fd"]
    _write_all(fd, b"start\n")
    try:
        sys.path.extend(p for p in payload["sys_path"] if p not in sys.path)
        payload["harness_fn"] = None
        if payload["harness"]:  # trusted checker code; a failure here is the caller's: a setup error
            module, _, name = payload["harness"].partition(":")
            if module.startswith("oss_grpo."):
                _import_oss_grpo(payload["package_root"])
            payload["harness_fn"] = vars(__import__(module, fromlist=[name]))[name]
        for module in payload["preload"]:
            try:
                __import__(module)
            except BaseException:  # the code's own import reports it after lock-down
                pass
        _write_all(fd, b"preloaded\n")  # a crash before this line is the code's (it chose the modules)
        if payload["gate_fd"] is not None:  # the parent's go-ahead: the code runs when no other gated call does
            os.read(payload["gate_fd"], 1)
            os.close(payload["gate_fd"])
        mapped = _mapped_bytes()  # before the new root hides /proc
        _new_root(payload)
        _limit(payload, mapped)
        _drop_privileges(payload["uid"])
        if payload["seccomp"] is not None:
            _install_seccomp(payload["seccomp"])
        sys.stdout.reconfigure(line_buffering=True)  # keep what was printed before a timeout kill
    except BaseException as e:
        _write_all(fd, b'{"setup_error":' + _to_json(f"{type(e).__name__}: {e}", [2]).encode() + b"}\n")
        os._exit(0)
    _write_all(fd, b"ready\n")
    line = _run_untrusted(payload)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # the code may have closed or replaced them
            pass
    _write_all(fd, line)
    os._exit(0)  # skip atexit hooks and finalizers the code may have registered


if __name__ == "__main__":
    main()
