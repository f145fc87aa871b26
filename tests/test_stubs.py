"""The `.pyi` stubs of weaveloop._core match the extension module.

Every public-facing class and function of the Rust module is declared in the stub,
and every name the stub declares exists in the module (weaveloop-only: the stub
describes our extension).
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import weaveloop._core as core

STUB = pathlib.Path(core.__file__).with_name("_core.pyi")


def _stub_tree() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            names[node.name] = members
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = set()
    return names


def _module_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, obj in vars(core).items():
        if name.startswith("__"):
            continue
        if inspect.isclass(obj):
            found[name] = {m for m in vars(obj) if not m.startswith("__")}
        elif callable(obj):
            found[name] = set()
    return found


def test_every_module_name_is_in_the_stub_and_back():
    stub, module = _stub_tree(), _module_names()
    assert set(stub) == set(module)


def test_every_class_member_is_in_the_stub_and_back():
    stub, module = _stub_tree(), _module_names()
    for cls, members in module.items():
        declared = {m for m in stub[cls] if not m.startswith("__")}
        assert members == declared, cls
