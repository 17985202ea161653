"""The README's Python examples run as doctests: what a notebook user copies must work as shown."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ``python`` block of the README written as a doctest."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S)
        if ">>>" in match.group(1)
    ]


def test_the_readme_python_examples_run_as_shown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write their files into the working folder
    blocks = python_blocks()
    assert blocks, "no doctest block in the README"
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs: dict = {}  # the blocks run in order and share their names, as in one notebook
    for line, code in blocks:
        test = parser.get_doctest(code, globs, f"README.md:{line}", str(README), line)
        runner.run(test, clear_globs=False)
        globs = test.globs
    results = runner.summarize(verbose=False)
    assert results.attempted >= 8 and results.failed == 0
