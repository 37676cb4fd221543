"""The package's imports form no cycle, and every module imports on its own in a fresh interpreter.
Imports inside functions (the lazy ones, for the optional Triton kernels and the native extension)
count as edges too: a cycle through one works only because of the order modules happen to load in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qa_kernels"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The qa_kernels modules ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qa_kernels"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("qa_kernels"))
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    # A package's __init__ importing its own submodules is how it exposes them; a submodule never
    # needs its package's __init__ (it imports siblings directly), so those edges are left out.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert "qa_kernels.ops.qa_head.op" in graph["qa_kernels.ops.qa_head.api"], (
        "the graph misses an import: the parser is broken"
    )
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(name) :], name])}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", [m for m in MODULES if m != "qa_kernels.__main__"])  # __main__ runs the CLI
def test_each_module_imports_alone(name):
    done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_package_and_the_command_help_do_not_import_torch():
    """``import qa_kernels`` and ``qa-kernels --help`` / ``doctor --help`` answer without torch (about
    a second to import); the public names load it on first use."""
    out = _run(
        "import contextlib, io, sys\n"
        "import qa_kernels, qa_kernels.cli\n"
        "for argv in (['--help'], ['doctor', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):\n"
        "        qa_kernels.cli.main(argv)\n"
        "    assert 'usage: qa-kernels' in text.getvalue(), text.getvalue()\n"
        "print('torch' in sys.modules, qa_kernels.__version__)\n"
    )
    assert out.split()[0] == "False", out


@pytest.mark.parametrize("first", ["qa_head", "decode_spans", "QAHead", "reference", "use_backend"])
def test_the_first_public_name_loads_it_and_registers_both_ops(first):
    out = _run(
        "import qa_kernels, torch\n"
        f"value = getattr(qa_kernels, {first!r})\n"
        "assert qa_kernels.__dict__[" + repr(first) + "] is value  # cached: the next lookup is plain\n"
        "ns = torch.ops.qa_kernels\n"
        "print(all(hasattr(ns, op) for op in ('qa_head_fwd', 'qa_head_bwd', 'decode_spans')))\n"
    )
    assert out.split()[-1] == "True", out


def test_all_lists_exactly_the_lazy_names_and_each_resolves():
    import qa_kernels

    assert sorted(qa_kernels.__all__) == sorted([*qa_kernels._EXPORTS, *qa_kernels._SUBMODULES])
    for name in qa_kernels.__all__:
        assert getattr(qa_kernels, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'qa_headd'"):
        qa_kernels.qa_headd  # noqa: B018
