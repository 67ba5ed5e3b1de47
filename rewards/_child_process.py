"""The parent's side of one sandbox call: start the child, feed it, read its pipes under caps against the
wall clock, then kill it and everything it spawned.

Apart from `sandbox.py` because it is plumbing with its own failure modes (a full pipe, a child that
never reads its stdin, a grandchild holding stdout open, a recycled pid) and no policy: what the bytes
mean is decided by `sandbox._classify`.
"""

import dataclasses
import marshal
import os
import selectors
import signal
import subprocess
import threading
import time

from oss_grpo.rl.errors import SandboxError

GRACE_AFTER_EXIT_S = 0.2
"""How long output may still arrive from descendants after the child itself has exited."""


@dataclasses.dataclass
class ChildOutcome:
    """What the parent saw of the child: raw bytes and how it ended."""

    stdout: bytes
    stderr: bytes
    channel: bytes
    returncode: int | None
    timed_out: bool
    overflow: str | None  # "stdout", "stderr" or "result"
    queued_s: float = 0.0
    """Seconds the started child waited for the gate (not counted against its deadline)."""


def supervise(cmd: list[str], env: dict[str, str], payload: dict, workdir: str, deadline: float,
              output_limit: int, result_limit: int, sweep_uid: int | None,
              gate: "threading.Lock | None" = None) -> ChildOutcome:
    """Start the child, feed it the payload, read its three pipes under caps until it ends or time is up.

    With a `gate`, the child stops after its trusted start-up (the `preloaded` line) until this call holds the gate,
    and the gate is held until the child is gone: calls sharing a gate start up side by side but run their code
    one at a time. The wait moves the deadline back by as long."""
    channel_r, channel_w = os.pipe()
    gate_r, gate_w = os.pipe() if gate is not None else (None, None)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(channel_w,) + ((gate_r,) if gate_r is not None else ()), cwd=workdir,
                                env=env, start_new_session=True)
    except OSError as e:
        for fd in (channel_r, gate_w):
            if fd is not None:
                os.close(fd)
        raise SandboxError(f"cannot start the sandbox child: {e}") from e
    finally:
        for fd in (channel_w, gate_r):
            if fd is not None:
                os.close(fd)
    pending = marshal.dumps({**payload, "result_fd": channel_w, "gate_fd": gate_r})  # trusted direction only
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", channel_r: "result"}
    caps = {"stdout": output_limit, "stderr": output_limit, "result": result_limit + 4096}
    bufs = {name: bytearray() for name in caps}
    sel = selectors.DefaultSelector()
    for fd in names:
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    exit_fd = _pidfd(proc.pid)
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ)
    timed_out, overflow, exited_at, held, queued = False, None, None, False, 0.0
    try:
        while overflow is None:
            now = time.monotonic()
            if exited_at is None and _has_exited(proc.pid):
                exited_at = now
            if exited_at is not None and (now - exited_at > GRACE_AFTER_EXIT_S or not _open_reads(sel, names)):
                break
            if now >= deadline:
                timed_out = True
                break
            wait = deadline - now if exit_fd is not None else min(deadline - now, 0.02)
            for key, _ in sel.select(min(wait, GRACE_AFTER_EXIT_S) if exited_at else wait):
                fd = key.fd
                if fd == exit_fd:
                    sel.unregister(fd)
                elif fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[:65536]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the child died; its exit status will say why
                        pending = b""
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                else:
                    chunk = os.read(fd, 65536)
                    name = names[fd]
                    if not chunk:
                        sel.unregister(fd)
                    elif len(bufs[name]) + len(chunk) > caps[name]:
                        bufs[name] += chunk[: caps[name] - len(bufs[name])]
                        overflow = name
                        break
                    else:
                        bufs[name] += chunk
                    if gate_w is not None and not held and b"preloaded\n" in bufs["result"]:
                        waited_from = time.monotonic()
                        gate.acquire()  # bounded: the holder's own deadline ends its turn
                        held, queued = True, time.monotonic() - waited_from
                        deadline += queued
                        try:
                            os.write(gate_w, b"g")
                        except BrokenPipeError:  # the child died waiting; its exit status will say why
                            pass
    finally:
        _terminate(proc, sweep_uid)
        if held:
            gate.release()
        if gate_w is not None:
            os.close(gate_w)
        sel.close()
        for fd in (channel_r, exit_fd):
            if fd is not None:
                os.close(fd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return ChildOutcome(bytes(bufs["stdout"]), bytes(bufs["stderr"]), bytes(bufs["result"]), proc.returncode,
                        timed_out, overflow, queued)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll instead
        return None


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place, so its pid (our process group id) cannot be reused before killpg.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _open_reads(sel: selectors.BaseSelector, names: dict[int, str]) -> bool:
    return any(fd in names for fd in sel.get_map())


def _terminate(proc: subprocess.Popen, sweep_uid: int | None) -> None:
    """SIGKILL the child's process group; with a PID namespace that takes every descendant with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if sweep_uid is not None:
        kill_uid(sweep_uid)
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass  # in uninterruptible sleep: the kernel finishes the kill; the caller must not wait


def kill_uid(uid: int, budget_s: float = 0.5) -> None:
    """Without a PID namespace a setsid() grandchild leaves the process group, but not its uid: kill by uid.

    Seccomp normally stops such children from being made; this is the layer under it. A pidfd pins the
    process before its uid is read, so a recycled pid is never killed by mistake.
    """
    give_up = time.monotonic() + budget_s  # within the "timeout + 2 s" promise, whatever the host's load
    while time.monotonic() < give_up:  # repeat: a process may fork while we sweep (RLIMIT_NPROC bounds it)
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fd = os.pidfd_open(int(entry))
            except OSError:
                continue
            try:
                with open(f"/proc/{entry}/status") as f:
                    owner = next((int(line.split()[1]) for line in f if line.startswith("Uid:")), None)
                if owner == uid:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    found = True
            except OSError:
                pass
            finally:
                os.close(fd)
        if not found:
            return
