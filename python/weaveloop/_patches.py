"""Telling asyncio's and the stdlib's own functions from those put in their place."""

from __future__ import annotations

import types


def defined_in(f, module, name: str) -> bool:
    """Whether ``f`` is the function ``name`` as ``module`` defines it, not a patch or a
    wrapper put in its place (a test's ``mock.patch``, a tracing agent's wrapper).

    Only then may weaveloop do in Rust what that function does: otherwise the stock
    code calls the replacement, and so must weaveloop.
    """
    return (
        type(f) is types.FunctionType
        and f.__globals__ is vars(module)
        and f.__code__.co_name == name
    )
