"""Calls of a test that can be made before the test runs, in the same round trip that loads the program.

Most asserts call the entry point with literal arguments (``assert candidate([1, 2]) == 3``). Each such call
site, in source order, is sent with the program; the program process makes the calls right after loading
and returns the replies with its "loaded" message. When the test then makes a call whose target and encoded
arguments match a prefetched one, it takes the next stored reply (decoded afresh, the program's exceptions
re-raised there) instead of a round trip; any other call goes to the program as before. The comparisons
still happen in the test, on data; only the order of the program's calls can differ from a live run (all
literal calls first), which changes nothing for a program whose answers depend on its arguments.

HumanEval calls the entry point through the parameter of ``check(candidate)``: a parameter of a function of
the test that the test calls with a program name as that argument is an alias of the name.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence

import sandbox_codec as codec

MAX_CALLS = 256


def _aliases(trees: list[ast.AST], names: set[str]) -> dict[str, str]:
    params = {n.name: [a.arg for a in n.args.args] for t in trees for n in ast.walk(t)
              if isinstance(n, ast.FunctionDef)}
    alias = {}
    for t in trees:
        for n in ast.walk(t):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in params:
                for param, arg in zip(params[n.func.id], n.args):
                    if isinstance(arg, ast.Name) and arg.id in names:
                        alias[param] = arg.id
    return alias


def _no_handle(x):
    raise TypeError("not a literal")


def key(name: str, args_json, kwargs_json) -> str:
    return json.dumps([name, args_json, kwargs_json], sort_keys=True)


def literal_calls(tests: Sequence[str], names: Sequence[str]) -> list[dict]:
    """``{"name", "args", "kwargs"}`` (encoded) for each call site of a program name, or of an alias of one,
    whose arguments are all literals, in source order."""
    trees = [ast.parse(t) for t in tests]
    targets = {n: n for n in names}
    targets.update({a: n for a, n in _aliases(trees, set(names)).items() if a not in targets})
    calls = []
    for tree in trees:
        sites = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                        and n.func.id in targets), key=lambda n: (n.lineno, n.col_offset))
        for site in sites:
            try:
                args = [ast.literal_eval(a) for a in site.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in site.keywords if k.arg is not None}
                if len(kwargs) != len(site.keywords):
                    continue
                calls.append({"name": targets[site.func.id], "args": codec.encode(args, _no_handle),
                              "kwargs": {k: codec.encode(v, _no_handle) for k, v in kwargs.items()}})
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue  # not a literal: made live
            if len(calls) >= MAX_CALLS:
                return calls
    return calls
