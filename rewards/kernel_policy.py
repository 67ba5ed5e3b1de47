"""The static rules a kernel submission must meet on top of `source_check`: the anti-cheat half that reads the code.

`sandbox.run` already refuses imports outside torch/triton/math, `exec`/`getattr`/dunder access and private
attributes. A kernel can still score without doing the work in ways only its text shows, so `kernel_findings`
refuses them before anything runs, one readable line per finding:
1. The op the task is about (`KernelTask.forbidden_ops`: `torch.softmax`, `x.softmax(...)`, `F.softmax`,
   `tl.softmax`, `from torch import softmax`), and for the matmul task `a @ b` outside a `@triton.jit` function.
2. State kept between calls (a cache answers the second call without computing): the top level may hold only
   imports, functions and constants; no `global`/`nonlocal`, no classes, no attribute assignment (which is also
   monkeypatching torch, the checker or the timer), constant default arguments only.
3. Identity instead of values: `id()`, `hash()`, `.data_ptr()`, `.storage()`.
4. The process around the kernel: streams, events, synchronization (`torch.cuda.*`), `torch.compile`, and the
   module attributes that lead to `sys`/`os` without an import (`torch.sys.modules`).
The run-time half is in `_kernel_harness` (trapped ops, a trial reusing the same tensor objects with new values,
poisoned outputs) and every verdict is the parent's (`kernel_check`). Like `source_check`, this is policy: it sees
names, so it is a scoring rule, while the sandbox's OS layers are the wall.
"""

import ast

from oss_grpo.envs.kernelgen import KernelTask

PROCESS_ATTRIBUTES = frozenset({
    "sys", "os", "modules", "builtins", "inspect", "gc", "ctypes", "importlib", "subprocess", "cuda", "Stream",
    "stream", "Event", "synchronize", "compile", "library", "ops", "hub", "fx", "data_ptr", "storage",
    "untyped_storage", "set_grad_enabled",
})
"""Attributes no kernel needs, whatever the task: the way out to the process, the timer, or tensor identity."""
IDENTITY_NAMES = frozenset({"id", "hash"})


def kernel_findings(source: str, task: KernelTask) -> list[str]:
    """Every rule `source` breaks for `task` ("line 3: ..."); empty when it may run. Unparsable source: one finding."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return [f"the code does not parse: {type(e).__name__}: {getattr(e, 'msg', None) or e}"]
    findings = [f"line {stmt.lineno}: the top level may hold only imports, functions and constants"
                for stmt in tree.body if not _allowed_at_top(stmt)]
    forbidden_ops = set(task.forbidden_ops)
    jitted = _jitted_nodes(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Global | ast.Nonlocal):
            findings.append(f"line {line}: global/nonlocal state is not allowed (no state between calls)")
        elif isinstance(node, ast.ClassDef):
            findings.append(f"line {line}: classes are not allowed; write functions")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.ctx, ast.Store | ast.Del):
                findings.append(f"line {line}: assigning the attribute {node.attr!r} is not allowed")
            if node.attr in forbidden_ops:
                findings.append(f"line {line}: {node.attr!r} is the op this task asks you to implement")
            elif node.attr in PROCESS_ATTRIBUTES:
                findings.append(f"line {line}: {node.attr!r} is not allowed in a kernel")
        elif isinstance(node, ast.ImportFrom) and any(a.name in forbidden_ops for a in node.names):
            findings.append(f"line {line}: importing the op this task asks you to implement is not allowed")
        elif isinstance(node, ast.Name) and node.id in IDENTITY_NAMES:
            findings.append(f"line {line}: {node.id}() reads an object's identity; compute from the values")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
            if not all(_is_constant(d) for d in defaults):
                findings.append(f"line {line}: default arguments must be constants")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult) and task.forbid_matmul_operator \
                and node not in jitted:
            findings.append(f"line {line}: the @ operator is only allowed inside a @triton.jit kernel")
    return findings


def _is_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _is_constant(node.operand)
    return isinstance(node, ast.Tuple) and all(_is_constant(e) for e in node.elts)


def _allowed_at_top(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef):
        return True
    if isinstance(stmt, ast.Expr):
        return isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)  # a docstring
    if isinstance(stmt, ast.Assign):
        return all(isinstance(t, ast.Name) for t in stmt.targets) and _is_constant(stmt.value)
    if isinstance(stmt, ast.AnnAssign):  # BLOCK: tl.constexpr = 128
        return isinstance(stmt.target, ast.Name) and stmt.value is not None and _is_constant(stmt.value)
    return False


def _is_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "jit") or \
        (isinstance(target, ast.Name) and target.id == "jit")


def _jitted_nodes(tree: ast.Module) -> set[ast.AST]:
    """Every node inside a function decorated with `triton.jit` (or `jit`): Triton code, where `@` is tl.dot."""
    inside: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(_is_jit(d) for d in node.decorator_list):
            inside.update(ast.walk(node))
    return inside
