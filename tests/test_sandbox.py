"""Adversarial suite for rewards.sandbox: one parametrised case per attack, each asserting the outcome.

Every case checks: the attack is contained (no effect outside; where it can leave processes, none of
its uid outlives the call), it is scored (`ok` False with a recognisable `failure` and `error`, or a
harmless value), the call returned within timeout + 2 s, and this test process is alive and received
no signal (the autouse fixture).

The attacks run against each layer on its own: "static" cases go through the public `run`; "runtime"
cases switch the static check off (monkeypatched) to show the child's builtins and import guard hold;
"os" cases also reach `os` without importing it (`().__class__...__subclasses__()`), to show the OS
layers (new root, uid, seccomp, rlimits, namespaces) hold when both policy layers are gone.
"""

import dataclasses
import json
import math
import os
import re
import signal
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oss_grpo.rewards import _seccomp, sandbox, source_check
from oss_grpo.rl.errors import SandboxError

T = 1.0  # timeout for attacks; small so the suite stays fast
BOUND = T + 2.0
OS = ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
      ".__init__.__globals__['sys'].modules['os']")  # os, reached with no import statement


def check(result: sandbox.SandboxResult, took: float, failure: str | None, error: str | None = None) -> None:
    assert took <= BOUND and result.seconds <= BOUND, (took, result)
    assert result.failure == failure, result
    assert result.ok is (failure is None), result
    if error is not None:
        assert re.search(error, result.error or ""), result


def timed_run(*args, **kwargs) -> tuple[sandbox.SandboxResult, float]:
    kwargs.setdefault("timeout_s", T)
    start = time.monotonic()
    result = sandbox.run(*args, **kwargs)
    return result, time.monotonic() - start


def live_processes_of(uid: int) -> list[int]:
    """Pids owned by `uid` that are not zombies (reaping orphans is init's job, not ours)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def assert_gone(uid: int) -> None:
    deadline = time.monotonic() + 1.0
    while live_processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_processes_of(uid) == [], f"processes of sandbox uid {uid} outlived the call"


@pytest.fixture(autouse=True)
def parent_unharmed():
    """Record any SIGTERM/SIGUSR1 sent to this process during a test: a sandbox must never reach us."""
    received = []
    old = {s: signal.signal(s, lambda n, _: received.append(n)) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)
    assert received == [], f"the test process received signals {received}"


@pytest.fixture
def static_off(monkeypatch):
    """Switch off the static check so the run-time and OS layers face the attack alone."""
    real = source_check.check_source
    monkeypatch.setattr(sandbox, "check_source", lambda s, a: dataclasses.replace(real(s, a), findings=()))


# ---- positive cases -----------------------------------------------------------------------------

STRATEGY = """
import random
from collections import Counter

def strategy(board):
    print("empty cells:", sum(row.count(0) for row in board))
    counts = Counter(v for row in board for v in row)
    return "W" if counts[0] > 2 else random.choice("ASD")
"""


def test_strategy_returns_its_move_and_stdout_is_captured():
    board = [[2, 0, 0, 4], [0, 0, 2, 0], [4, 8, 0, 0], [0, 0, 0, 2]]
    result, took = timed_run(STRATEGY, "strategy", args=(board,))
    check(result, took, None)
    assert result.value == "W" and result.stdout == "empty cells: 10\n"


@pytest.mark.parametrize("module", sorted(sandbox.DEFAULT_ALLOWED_IMPORTS))
def test_default_allowed_imports_work(module):
    result, took = timed_run(f"import {module}\ndef f():\n    return {module}.__name__", "f", timeout_s=5)
    check(result, took, None)
    assert result.value == module


def test_kwargs_tuples_and_floats_round_trip():
    src = "import math\ndef f(xs, *, scale):\n    return {'sum': math.fsum(xs) * scale, 'xs': xs}"
    result, took = timed_run(src, "f", args=((1.5, 2.5),), kwargs={"scale": 2})
    check(result, took, None)
    assert result.value == {"sum": 8.0, "xs": [1.5, 2.5]}  # tuples arrive as lists


def test_concurrent_calls_are_independent():
    src = "def f(i):\n    return i * i"
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, sandbox.run(src, "f", args=(i,))))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.value for r in results] == [0, 1, 4, 9]


SPAN = "import time\ndef f(seconds):\n    t0 = time.monotonic()\n    while time.monotonic() - t0 < seconds:\n" \
       "        pass\n    return [t0, time.monotonic()]"


def run_together(calls: list[dict]) -> list[sandbox.SandboxResult]:
    """`sandbox.run(**call)` for every call, each from its own thread, all started at once."""
    results = [None] * len(calls)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, sandbox.run(**calls[i])))
               for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_calls_sharing_a_gate_run_their_code_one_at_a_time():
    """What lets the kernel rewards start several checks at once and still time each kernel alone: the code of
    gated calls never overlaps (the spans are the code's own clock readings, ordered, not timed)."""
    gate = threading.Lock()
    call = dict(source=SPAN, function="f", args=(0.2,), allowed_imports={"time"}, gate=gate)
    results = run_together([call] * 4)
    assert all(r.ok for r in results), results
    spans = sorted(r.value for r in results)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert not gate.locked()


def test_a_gated_call_that_times_out_lets_the_next_one_run():
    gate = threading.Lock()
    hang = dict(source="def f(x):\n    while True:\n        pass", function="f", args=(0,), timeout_s=1.0, gate=gate)
    quick = dict(source=SPAN, function="f", args=(0.0,), allowed_imports={"time"}, timeout_s=5.0, gate=gate)
    first, second = run_together([hang, quick])
    assert first.failure == "timeout" and second.ok and not gate.locked()


def test_waiting_for_the_gate_does_not_count_against_the_timeout():
    """Held elsewhere for 2.5 s, the gate makes a 1.5 s call wait longer than its whole budget; it still runs."""
    gate = threading.Lock()
    gate.acquire()
    releaser = threading.Timer(2.5, gate.release)
    releaser.start()
    result = sandbox.run(SPAN, "f", args=(0.0,), allowed_imports={"time"}, timeout_s=1.5, gate=gate)
    releaser.join()
    assert result.ok, result
    assert result.seconds < 2.5  # the wait is left out of `seconds` too


# ---- static layer: refused before anything runs -------------------------------------------------

STATIC = {
    "import_os": ("import os\ndef f(): return os.getcwd()", r"import of 'os' is not allowed"),
    "dunder_import": ("def f(): return __import__('os').getcwd()", r"'__import__'"),
    "importlib": ("import importlib\ndef f(): return importlib.import_module('os')", r"import of 'importlib'"),
    "getattr_builtins": ("def f(): return getattr(__builtins__, '__import__')('os')", r"'getattr'"),
    "sys_modules": ("import sys\ndef f(): return sys.modules['os'].system('id')", r"import of 'sys'"),
    "exec_eval": ("def f():\n    exec('import os')\n    return eval('1')", r"'exec'.*'eval'"),
    "frame_walk": ("import sys\ndef f(): return sys._getframe(1).f_globals", r"'_getframe'"),
    "traceback_frames": ("def f():\n    try: 1/0\n    except Exception as e: return e.__traceback__", r"'__traceback__'"),
    "subclasses": ("def f(): return ().__class__.__base__.__subclasses__()", r"'__class__'"),
    "read_passwd": ("def f(): return open('/etc/passwd').read()", r"'open'"),
    "os_system": ("import os\ndef f(): return os.system('id')", r"import of 'os'"),
    "subprocess": ("import subprocess\ndef f(): return subprocess.run(['id'])", r"import of 'subprocess'"),
    "socket": ("import socket\ndef f(): return socket.socket()", r"import of 'socket'"),
    "patch_checker": ("import oss_grpo.rewards.sandbox as s\ndef f(): s.run = None", r"import of 'oss_grpo'"),
    "module_private_os": ("import random\ndef f(): return random._os.system('id')", r"'_os'"),
    "relative_import": ("from . import secrets\ndef f(): pass", r"relative imports"),
}


@pytest.mark.parametrize("name", STATIC)
def test_static_check_refuses(name):
    source, finding = STATIC[name]
    result, took = timed_run(source, "f")
    check(result, took, "rejected", finding)
    assert result.seconds < 0.5  # no process was started


@pytest.mark.parametrize("source", ["def f(:\n    pass", "x = " + "(" * 500 + ")" * 500 + "\ndef f(): pass",
                                    "x = " + "-" * 100_000 + "1\ndef f(): pass", "#" * 300_000])
def test_unparsable_or_pathological_source_is_a_syntax_failure(source):
    result, took = timed_run(source, "f")
    check(result, took, "syntax")


def test_missing_function_is_named():
    result, took = timed_run("def g(): pass", "strategy")
    check(result, took, "missing", r"'strategy'")


# ---- run-time layer: static check off -----------------------------------------------------------

RUNTIME = {
    "dunder_import": ("def f(): return __import__('os').getcwd()", r"ImportError: import of 'os' is not allowed"),
    "importlib": ("import importlib\ndef f(): pass", r"ImportError: import of 'importlib'"),
    "getattr_builtins": ("def f(): return getattr(__builtins__, '__import__')('os')", r"NameError: .*'getattr'"),
    "builtins_dict": ("def f(): return __builtins__['__import__']('os')", r"ImportError: import of 'os'"),
    "forged_relative": ("def f(): return __import__('path', {'__package__': 'os'}, None, (), 1)",
                        r"ImportError: import of 'os'"),
    "two_faced_globals": ("class G:\n    n = 0\n    def get(self, k, d=None):\n        G.n += 1\n"
                          "        return 'random' if G.n == 1 else 'os'\n"
                          "def f(): return __import__('', G(), None, ('path',), 1)", r"ImportError: relative import"),
    "sys_modules": ("import sys\ndef f(): return sys.modules['os']", r"ImportError: import of 'sys'"),
    "exec": ("def f(): exec('x = 1')", r"NameError: .*'exec'"),
    "eval": ("def f(): return eval('1 + 1')", r"NameError: .*'eval'"),
    "frame_walk": ("def f():\n    import sys\n    return sys._getframe(1)", r"ImportError: import of 'sys'"),
    "read_passwd": ("def f(): return open('/etc/passwd').read()", r"NameError: .*'open'"),
}


@pytest.mark.parametrize("name", RUNTIME)
def test_runtime_guard_refuses(static_off, name):
    source, error = RUNTIME[name]
    result, took = timed_run(source, "f")
    check(result, took, "raised", error)


# ---- OS layer: static check off and `os` in hand ------------------------------------------------

OS_ATTACKS = {
    "read_passwd": (f"def f():\n    os = {OS}\n    return os.read(os.open('/etc/passwd', 0), 99)",
                    "raised", r"FileNotFoundError"),
    "chroot_escape": (f"def f():\n    os = {OS}\n    os.mkdir('x')\n    os.chroot('x')", "raised",
                      r"PermissionError"),
    "os_system": (f"def f():\n    os = {OS}\n    return os.system('echo pwned')", "status", None),
    "exec_binary": (f"def f():\n    os = {OS}\n    os.execv('/bin/sh', ['sh', '-c', 'echo pwned'])", "raised",
                    r"PermissionError|FileNotFoundError"),
    "fork": (f"def f():\n    os = {OS}\n    return os.fork()", "raised", r"PermissionError"),
    "fork_bomb": (f"def f():\n    os = {OS}\n    while True:\n        os.fork()", "raised", r"PermissionError"),
    "setsid_grandchild": (f"def f():\n    os = {OS}\n    if os.fork() == 0:\n        os.setsid()\n"
                          "        while True: pass", "raised", r"PermissionError"),
    "kill_group": (f"def f():\n    os = {OS}\n    os.kill(-1, 15)\n    os.kill(0, 15)", "raised",
                   r"PermissionError"),
    "os_exit": (f"def f():\n    os = {OS}\n    os._exit(0)", "exited", r"status 0 before returning"),
    "write_10gb_file": (f"def f():\n    os = {OS}\n    fd = os.open('big', os.O_WRONLY | os.O_CREAT)\n"
                        "    while True:\n        os.write(fd, b'x' * 2**20)", "raised", r"File too large"),
    "fill_the_disk": (f"def f():\n    os = {OS}\n    for i in range(1000):\n"
                      "        fd = os.open(str(i), os.O_WRONLY | os.O_CREAT)\n"
                      "        for _ in range(15): os.write(fd, b'x' * 2**20)", "raised", r"No space left"),
    "abort": (f"def f():\n    os = {OS}\n    os.abort()", "killed", r"SIGABRT|SIGSEGV"),  # PID 1 ends in SIGSEGV
    "list_root": (f"def f():\n    os = {OS}\n    return os.listdir('/')", "empty", None),
}


@pytest.mark.parametrize("name", OS_ATTACKS)
def test_os_layer_contains(static_off, name):
    source, outcome, error = OS_ATTACKS[name]
    result, took = timed_run(source, "f")
    if outcome == "status":  # system() could not spawn a shell: non-zero status, nothing printed
        check(result, took, None)
        assert result.value != 0 and "pwned" not in result.stdout
    elif outcome == "empty":  # the root is the private tmpfs: nothing of the host is there
        check(result, took, None)
        assert result.value == []
    else:
        check(result, took, outcome, error)


def test_files_outside_the_work_dir_are_unreachable(static_off, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the reference answer")
    source = f"def f(path):\n    os = {OS}\n    return os.read(os.open(path, 0), 99).decode()"
    result, took = timed_run(source, "f", args=(str(secret),))
    check(result, took, "raised", r"FileNotFoundError")


def test_signal_to_the_parent_is_refused(static_off):
    for target in ("os.getppid()", str(os.getpid())):
        result, took = timed_run(f"def f():\n    os = {OS}\n    os.kill({target}, 15)", "f")
        check(result, took, "raised", r"PermissionError")  # and parent_unharmed saw no SIGTERM


# ---- resources, exits and results (public API) --------------------------------------------------

RESOURCES = {
    "infinite_loop": ("def f():\n    while True: pass", "timeout", r"no result within 1 s"),
    "sleep_past_timeout": ("import time\ndef f():\n    time.sleep(60)", "timeout", r"TimeoutError"),
    "allocate_50gb": ("def f():\n    return len(bytearray(50 * 2**30))", "raised", r"^MemoryError"),
    "grow_until_oom": ("def f():\n    xs = []\n    while True: xs.append(' ' * 2**20)", "raised", r"^MemoryError"),
    "print_gigabytes": ("def f():\n    while True: print('x' * 2**16)", "output_limit", r"stdout"),
    "stderr_flood": ("import sys\ndef f():\n    while True: sys.stderr.write('x' * 2**16)", "output_limit",
                     r"stderr"),
    "deep_recursion": ("def f(n=0):\n    return f(n + 1)", "raised", r"RecursionError"),
    "sys_exit": ("import sys\ndef f():\n    sys.exit(3)", "raised", r"SystemExit: 3"),
    "raise_base_exception": ("class Escape(BaseException): pass\ndef f():\n    raise Escape('out')", "raised",
                             r"Escape: out"),
    "keyboard_interrupt": ("def f():\n    raise KeyboardInterrupt", "raised", r"KeyboardInterrupt"),
    "hostile_str": ("class E(Exception):\n    def __str__(self): raise E()\ndef f():\n    raise E()", "raised",
                    r"E: <unprintable>"),
    "return_function": ("def f():\n    return f", "bad_result", r"type function"),
    "return_generator": ("def f():\n    return (i for i in range(3))", "bad_result", r"type generator"),
    "return_set": ("def f():\n    return {1, 2}", "bad_result", r"type set"),
    "return_str_subclass": ("class S(str): pass\ndef f():\n    return [S('W')]", "bad_result", r"type S"),
    "return_int_keys": ("def f():\n    return {1: 'a'}", "bad_result", r"JSON keys must be str"),
    "return_huge_string": ("def f():\n    return 'x' * 10**7", "bad_result", r"ResultTooLarge"),
    "return_huge_int": ("def f():\n    return 10**10000", "bad_result", r"ValueError"),
    "return_cycle": ("def f():\n    xs = []\n    xs.append(xs)\n    return xs", "bad_result", r"nested deeper"),
    "return_deep_nesting": ("def f():\n    x = []\n    for _ in range(100000): x = [x]\n    return x",
                            "bad_result", r"nested deeper"),
}


@pytest.mark.parametrize("name", RESOURCES)
def test_resource_and_result_attacks(name):
    source, failure, error = RESOURCES[name]
    result, took = timed_run(source, "f", allowed_imports=sandbox.DEFAULT_ALLOWED_IMPORTS | {"time", "sys"})
    check(result, took, failure, error)
    if failure == "timeout":
        assert result.timed_out and result.killed_by == "SIGKILL"


def test_inputs_are_copies():
    board = [[2, 2, 0, 0], [0] * 4, [0] * 4, [0] * 4]
    source = "def strategy(board):\n    board[0][0] = 2048\n    board.append('cheat')\n    return 'W'"
    result, took = timed_run(source, "strategy", args=(board,))
    check(result, took, None)
    assert board == [[2, 2, 0, 0], [0] * 4, [0] * 4, [0] * 4]


def test_monkeypatching_stays_in_the_child():
    patch = "import math\ndef f():\n    math.sqrt = lambda x: 42\n    return math.sqrt(4)"
    result, took = timed_run(patch, "f")
    check(result, took, None)
    assert result.value == 42 and math.sqrt(4) == 2.0
    after, _ = timed_run("import math\ndef f():\n    return math.sqrt(4)", "f")
    assert after.value == 2.0  # every call is a fresh interpreter


def test_monkeypatching_torch_stays_in_the_child():
    torch = pytest.importorskip("torch")
    source = "import torch\ndef f():\n    torch.allclose = lambda *a, **k: True\n    return torch.allclose(torch.ones(1), torch.zeros(1))"
    result, took = timed_run(source, "f", timeout_s=20, allowed_imports={"torch"})
    assert took <= 20 + 2 and result.ok and result.value is True  # the child fooled itself ...
    assert not torch.allclose(torch.ones(1), torch.zeros(1))  # ... and nobody else


def test_returning_a_reference_result_fails_a_verdict_computed_in_the_parent(static_off):
    """How callers defend: fresh inputs per call and the verdict computed here, never in the child.

    The code returns a canned answer and walks frames looking for an `expected` value to copy; the
    child holds neither the reference nor the checker, so the parent's comparison fails it.
    """
    source = ("def solve(xs):\n    try: 1/0\n    except ZeroDivisionError as e: frame = e.__traceback__.tb_frame\n"
              "    seen = []\n    while frame is not None:\n        seen += list(frame.f_globals)\n"
              "        frame = frame.f_back\n    return {'answer': [3, 1, 2], 'seen': seen}")
    xs = [5, 9, 4]  # drawn fresh per call by a real checker
    result, took = timed_run(source, "solve", args=(xs,))
    check(result, took, None)
    assert "expected" not in result.value["seen"]
    assert result.value["answer"] != sorted(xs)  # the parent's verdict: failed


# ---- layers forced off: each remaining layer still contains the attack --------------------------

UID_THEN = f"def f():\n    os = {OS}\n    os.write(1, b'%d\\n' % os.getuid())\n"
LAYERED = {
    "setsid_grandchild": UID_THEN + "    if os.fork() == 0:\n        os.setsid()\n        while True: pass\n"
                                    "    return 'parent left'",
    "fork_bomb": UID_THEN + "    while True:\n        os.fork()",
    "infinite_loop": UID_THEN + "    while True: pass",
    "read_passwd": UID_THEN + "    return os.read(os.open('/etc/passwd', 0), 99)",
    "signal_parent": UID_THEN + f"    os.kill({os.getpid()}, signal_number)",
}
MODES = {
    "namespaces_no_seccomp": sandbox.Isolation(namespaces=True, root=True, seccomp=False),
    "fallback_seccomp": sandbox.Isolation(namespaces=False, root=True, seccomp=True),
    "fallback_no_seccomp": sandbox.Isolation(namespaces=False, root=True, seccomp=False),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid-per-call and chroot layers need root")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attack", LAYERED)
def test_each_layer_alone_contains(static_off, monkeypatch, mode, attack):
    monkeypatch.setattr(sandbox, "isolation", lambda: MODES[mode])
    if MODES[mode].seccomp and attack in ("setsid_grandchild", "fork_bomb"):
        expected = ("raised", r"PermissionError")
    elif attack == "setsid_grandchild":
        expected = (None, None)  # the child returns; the PID namespace or the uid sweep kills the grandchild
    elif attack == "fork_bomb":
        expected = ("raised", r"BlockingIOError")  # RLIMIT_NPROC of the call's own uid, then killed
    elif attack == "infinite_loop":
        expected = ("timeout", None)
    elif attack == "read_passwd":
        expected = ("raised", r"FileNotFoundError")
    else:
        expected = ("raised", r"PermissionError|ProcessLookupError")
    source = LAYERED[attack].replace("signal_number", str(int(signal.SIGTERM)))
    result, took = timed_run(source, "f")
    if attack == "fork_bomb" and result.failure == "timeout":
        expected = ("timeout", None)  # a slow machine may not reach the limit before the clock
    check(result, took, *expected)
    assert_gone(int(result.stdout.split()[0]))


@pytest.mark.parametrize("attack, expected", [
    ("strategy", (None, None)), ("fork_bomb", ("raised", r"PermissionError")),
    ("infinite_loop", ("timeout", None)), ("socket", ("raised", r"PermissionError")),
])
def test_unprivileged_fallback_keeps_seccomp_and_the_clock(static_off, monkeypatch, attack, expected):
    """Not root and no user namespaces: no new root and no own uid, but fork, sockets and time still held."""
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation(namespaces=False, root=False, seccomp=True))
    source = {
        "strategy": STRATEGY.replace("def strategy", "def f"),
        "fork_bomb": f"def f(board):\n    os = {OS}\n    while True: os.fork()",
        "infinite_loop": "def f(board):\n    while True: pass",
        "socket": "import socket\ndef f(board):\n    return socket.socket()",
    }[attack]
    result, took = timed_run(source, "f", args=([[0, 2], [2, 0]],), allowed_imports={"random", "collections", "socket"})
    check(result, took, *expected)


def test_probe_falls_back_when_unshare_is_refused(monkeypatch, caplog, static_off):
    monkeypatch.setattr(sandbox, "_NAMESPACE_FLAGS", ("--no-such-flag",))
    sandbox.isolation.cache_clear()
    try:
        assert sandbox.isolation().namespaces is False
        assert "without namespaces" in caplog.text
        result, took = timed_run("import socket, encodings.idna\ndef f():\n    socket.create_connection(('127.0.0.1', 9))",
                                 "f", allowed_imports={"socket", "encodings"})
        check(result, took, "raised", r"PermissionError")  # blocked sockets: seccomp, not a namespace
    finally:
        sandbox.isolation.cache_clear()


@pytest.mark.parametrize("mode", ["default", "namespaces_no_seccomp", "fallback_seccomp"])
def test_no_network(monkeypatch, mode):
    """A caller that wrongly allows `socket` still gets no network: namespace, or seccomp, or both."""
    if mode != "default":
        monkeypatch.setattr(sandbox, "isolation", lambda: MODES[mode])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    source = f"import socket, encodings.idna\ndef f():\n    socket.create_connection(('127.0.0.1', {port}), 1).sendall(b'x')"
    with listener:
        result, took = timed_run(source, "f", allowed_imports={"socket", "encodings"})
        with pytest.raises(TimeoutError):
            listener.accept()
    check(result, took, "raised", r"PermissionError|Network is unreachable")


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(st.characters(exclude_categories=())),  # lone surrogates too
                    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20))
def test_child_json_encoder_round_trips(value):
    """The child encodes results itself (importing json costs more than the lock-down): same as json."""
    from oss_grpo.rewards import _sandbox_child  # stdlib-only; its main() runs only as a script

    report = _sandbox_child._report(None, value_json=_sandbox_child._to_json(value, [10**6]))
    assert json.loads(report) == {"ok": True, "value": json.loads(json.dumps(value))}


# ---- the caller's mistakes are SandboxError; the filter builds for both arches --------------------

@pytest.mark.parametrize("kwargs", [
    {"source": b"def f(): pass"}, {"function": "not an identifier"}, {"function": "class"}, {"timeout_s": 0},
    {"timeout_s": float("nan")}, {"memory_mb": 1}, {"allowed_imports": "math"}, {"args": (object(),)},
    {"kwargs": {"x": {1, 2}}}, {"output_limit_bytes": 0},
])
def test_bad_arguments_raise_sandbox_error(kwargs):
    call = {"source": "def f(*a, **k): pass", "function": "f", **kwargs}
    with pytest.raises(SandboxError):
        sandbox.run(**call)


def test_a_sandbox_that_cannot_lock_down_raises_instead_of_running_unprotected(monkeypatch):
    monkeypatch.setattr(_seccomp, "build_filter", lambda: b"\0" * 8)  # one load, no return: EINVAL
    with pytest.raises(SandboxError, match="could not lock down"):
        sandbox.run("def f(): return 1", "f")


def test_a_child_that_never_starts_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_CHILD", tmp_path / "missing.py")
    with pytest.raises(SandboxError, match="before it started"):
        sandbox.run("def f(): return 1", "f")


def test_a_crash_while_importing_what_the_code_names_is_the_codes_failure(monkeypatch, tmp_path):
    """The code picks which submodules of an allowed package are preloaded, so their crash is its own."""
    (tmp_path / "crashpkg").mkdir()
    (tmp_path / "crashpkg" / "__init__.py").write_text("")
    (tmp_path / "crashpkg" / "boom.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result, took = timed_run("import crashpkg.boom\ndef f(): pass", "f", allowed_imports={"crashpkg"})
    check(result, took, "exited", r"ImportCrash: the process ended with status 3")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_filter_builds(machine):
    program = _seccomp.build_filter(machine)
    assert len(program) % 8 == 0 and 40 < len(program) // 8 < 256  # jumps are 8-bit: stay short
