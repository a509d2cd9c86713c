"""Every public function of the model, the engine and the CLI documents its parameters and is typed.

"Public" means: a module-level function or a method of a class whose name does not start
with ``_`` (dunder methods such as ``__init__`` are skipped too), taking at least one
argument besides ``self`` / ``cls``. Such a function needs a docstring with a numpydoc
``Parameters`` section naming each of its arguments, an annotation on every argument and
a return annotation. Each source file is its own test case, so a failure names the file
(``pytest tests/test_docstrings.py -k model``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_sam"
PACKAGES = ("model", "engine", "cli")
FILES = sorted(path for package in PACKAGES for path in (SRC / package).rglob("*.py"))

# a numpydoc section header: the title, then a line of dashes under it
_SECTION = re.compile(r"^(?P<indent>[ \t]*)(?P<title>\w[\w ]*)\n(?P=indent)-{3,}[ \t]*$", re.MULTILINE)

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _public_functions(tree: ast.Module) -> Iterator[tuple[str, FunctionNode, bool]]:
    """``(qualified name, node, is_method)`` of the module's public functions and public classes' methods."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item, True


def _arguments(node: FunctionNode, is_method: bool) -> list[ast.arg]:
    """The arguments a caller passes: all of them, less the ``self`` / ``cls`` of a method."""
    spec = node.args
    arguments = [*spec.posonlyargs, *spec.args, *spec.kwonlyargs]
    arguments += [arg for arg in (spec.vararg, spec.kwarg) if arg is not None]
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if is_method and not is_static and arguments and arguments[0].arg in ("self", "cls"):
        arguments = arguments[1:]
    return arguments


def _parameters_section(docstring: str) -> str | None:
    """The body of the docstring's ``Parameters`` section, or None when it has none."""
    headers = list(_SECTION.finditer(docstring))
    for index, header in enumerate(headers):
        if header.group("title").strip() == "Parameters":
            end = headers[index + 1].start() if index + 1 < len(headers) else len(docstring)
            return docstring[header.end() : end]
    return None


def _documented_names(section: str) -> set[str]:
    """Names of the entries of a Parameters section: its least indented lines (``a, b : int`` gives both)."""
    lines = [line for line in section.splitlines() if line.strip()]
    if not lines:
        return set()
    base = min(len(line) - len(line.lstrip()) for line in lines)
    names = set()
    for line in lines:
        if len(line) - len(line.lstrip()) == base:
            head = line.split(" : ", 1)[0].rstrip(":")
            names.update(name.strip().lstrip("*") for name in head.split(","))
    return names


def problems(source: str) -> list[str]:
    """What is missing in the public functions of one module's ``source``, one line per function."""
    found = []
    for name, node, is_method in _public_functions(ast.parse(source)):
        arguments = _arguments(node, is_method)
        if not arguments:
            continue
        missing = []
        section = _parameters_section(ast.get_docstring(node) or "")
        if section is None:
            missing.append("a numpydoc 'Parameters' section")
        else:
            undocumented = [arg.arg for arg in arguments if arg.arg not in _documented_names(section)]
            if undocumented:
                missing.append(f"'Parameters' entries for {', '.join(undocumented)}")
        unannotated = [arg.arg for arg in arguments if arg.annotation is None]
        if unannotated:
            missing.append(f"annotations on {', '.join(unannotated)}")
        if node.returns is None:
            missing.append("a return annotation")
        if missing:
            found.append(f"{name} (line {node.lineno}) lacks {'; '.join(missing)}")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.relative_to(SRC).as_posix())
def test_public_functions_have_parameter_sections_and_type_hints(path: Path) -> None:
    found = problems(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(SRC)}:\n" + "\n".join(found)


def test_every_package_is_checked() -> None:
    checked = {path.relative_to(SRC).parts[0] for path in FILES}
    assert checked == set(PACKAGES)


GOOD = '''
def documented(a: int, *rest: str, flag: bool = False, **extra: object) -> int:
    """Summary.

    Parameters
    ----------
    a
        First.
    *rest, flag
        More.
    **extra
        Even more.

    Returns
    -------
    int
        The answer.
    """


class Public:
    def method(self, x: float) -> None:
        """Summary.

        Parameters
        ----------
        x : float
            Value.
        """

    def no_arguments(self):
        pass

    def _private(self, y):
        pass

    def __init__(self, z):
        pass


class _Private:
    def method(self, x):
        pass


def _helper(a):
    pass
'''

BAD = '''
def undocumented(a: int) -> int:
    """Summary only."""


def google_style(a: int) -> int:
    """Summary.

    Args:
        a: First.
    """


def unannotated(a, b: int):
    """Summary.

    Parameters
    ----------
    a
        First.
    b
        Second.
    """


class Public:
    @staticmethod
    def static(value: int) -> int:
        """Summary.

        Parameters
        ----------
        other
            Not the argument.

        Returns
        -------
        int
            Something.
        """
'''


def test_checker_accepts_complete_functions_and_skips_private_ones() -> None:
    assert problems(GOOD) == []


def test_checker_names_each_missing_piece() -> None:
    assert problems(BAD) == [
        "undocumented (line 2) lacks a numpydoc 'Parameters' section",
        "google_style (line 6) lacks a numpydoc 'Parameters' section",
        "unannotated (line 14) lacks annotations on a; a return annotation",
        "Public.static (line 28) lacks 'Parameters' entries for value",
    ]
