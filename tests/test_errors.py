"""The exception tree: each class carries its meaning, and nothing edits an exception once made."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline import errors

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

EXCEPTION_FIELDS = ("retryable", "retry_after", "args")
"""What an exception of ours says about itself, set by its class or its constructor only."""

NOT_EXCEPTIONS = {
    ("pipeline/redaction.py", "record.args"),  # a logging.LogRecord, scrubbed before it is emitted
}


def edits_of_exception_fields(root: Path) -> list[str]:
    """``path:line: target`` for every assignment to an exception field of another object."""
    found = []
    for path in sorted(root.rglob("*.py")):
        where = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            else:
                continue
            flat = [t for target in targets
                    for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            for target in flat:
                if not (isinstance(target, ast.Attribute) and target.attr in EXCEPTION_FIELDS):
                    continue
                if isinstance(target.value, ast.Name) and target.value.id == "self":
                    continue  # a constructor (or the class's own method) setting its own field
                text = ast.unparse(target)
                if (where, text) not in NOT_EXCEPTIONS:
                    found.append(f"{where}:{node.lineno}: {text}")
    return found


def test_no_module_edits_an_exception_after_it_is_made() -> None:
    edits = edits_of_exception_fields(PACKAGE)
    assert not edits, "give the meaning to the class or its constructor instead:\n" + "\n".join(edits)


def test_the_check_sees_edits_of_another_object(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "mod.py").write_text(
        "class E(Exception):\n"
        "    def __init__(self):\n"
        "        self.retryable = True\n"
        "def f(error, redact):\n"
        "    error.retryable = False\n"
        "    error.args = tuple(redact(a) for a in error.args)\n"
        "    first, error.retry_after = 1, 2.0\n", encoding="utf-8")
    assert edits_of_exception_fields(root) == [
        "pkg/mod.py:5: error.retryable", "pkg/mod.py:6: error.args",
        "pkg/mod.py:7: error.retry_after"]


@pytest.mark.parametrize(("guessed", "retryable"), [(True, True), (False, False)])
def test_a_missing_join_route_is_retryable_only_when_the_route_was_guessed(
        guessed: bool, retryable: bool) -> None:
    error = errors.RouteNotFoundError("HTTP 404 from http://x/queue/join", guessed=guessed)
    assert isinstance(error, errors.HTTPStatusError)
    assert (error.status, error.guessed, error.retryable) == (404, guessed, retryable)
    assert error.error_type == "http_status"  # the errors file's error_type is unchanged


def test_a_rejected_join_is_never_retried() -> None:
    error = errors.JoinRejectedError("HTTP 500 from http://x/queue/join: Internal Server Error")
    assert isinstance(error, errors.HTTPStatusError)
    assert (error.status, error.retryable, error.error_type) == (500, False, "http_status")
    assert errors.HTTPStatusError("any other 500", status=500).retryable  # the status alone: yes


def test_the_tree_drawn_in_the_docstring_names_every_class() -> None:
    doc = errors.__doc__ or ""
    classes = [name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.QwenBatchError)]
    missing = [name for name in classes if f"── {name} " not in doc and name != "QwenBatchError"]
    assert not missing, missing
