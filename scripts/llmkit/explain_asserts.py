"""Failing asserts in notebook cells that say what was expected, as pytest's do.

A bare `assert answer == "Paris"` raises an AssertionError with no message. Registered in
IPython (`register()`, which the notebook's `setup()` calls), each `assert` with no message
of its own is rewritten before the cell runs, so that a failure reads

    AssertionError: assert whole["finish_reason"] == "stop"
      left:  'length'
      right: 'stop'

Each side is evaluated once, as in the plain assert, so an `await` in it runs once.
"""

from __future__ import annotations

import ast

_LEFT, _RIGHT, _VALUE = "_assert_left", "_assert_right", "_assert_value"


def message(source: str, *sides) -> str:
    """The failure's text: the assert as written, then the value of each side."""
    if len(sides) == 1:
        return f"assert {source}\n  got: {sides[0]!r}"
    left, right = sides
    return f"assert {source}\n  left:  {left!r}\n  right: {right!r}"


class ExplainAsserts(ast.NodeTransformer):
    """IPython's AST transformer: `assert <a> <op> <b>` (or `assert <expr>`) becomes
    the sides bound to names, then the assert with a message built from them."""

    def visit_Assert(self, node: ast.Assert):
        if node.msg is not None:
            return node
        source = ast.unparse(node.test)
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            binds = [(_LEFT, test.left), (_RIGHT, test.comparators[0])]
            check = ast.Compare(left=ast.Name(_LEFT, ast.Load()), ops=test.ops,
                                comparators=[ast.Name(_RIGHT, ast.Load())])
        else:
            binds = [(_VALUE, test)]
            check = ast.Name(_VALUE, ast.Load())
        # __import__(this module, fromlist=["message"]).message(source, *sides): no name the
        # cell must have imported.
        module = ast.Call(ast.Name("__import__", ast.Load()),
                          [ast.Constant(__name__), ast.Constant(None), ast.Constant(None),
                           ast.List([ast.Constant("message")], ast.Load())], [])
        explain = ast.Call(
            func=ast.Attribute(module, "message", ast.Load()),
            args=[ast.Constant(source)] + [ast.Name(name, ast.Load()) for name, _ in binds],
            keywords=[])
        statements = [ast.Assign([ast.Name(name, ast.Store())], value) for name, value in binds]
        statements.append(ast.Assert(check, explain))
        for statement in statements:
            ast.copy_location(statement, node)
            ast.fix_missing_locations(statement)
        return statements


def register(shell=None) -> bool:
    """Explain asserts in every cell ``shell`` (the running IPython) runs from now on.
    Returns False outside IPython. Registering twice changes nothing."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None:
        return False
    if not any(isinstance(t, ExplainAsserts) for t in shell.ast_transformers):
        shell.ast_transformers.append(ExplainAsserts())
    return True
