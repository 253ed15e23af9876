"""The README's optax-loop snippet runs and prints the numbers the README says it prints."""

import contextlib
import io
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
PRETRAINED_LINE = re.compile(r'^tx = lopt\.pretrained\.optimizer\(.*$', re.M)


def _readme() -> str:
  with open(README, encoding="utf-8") as f:
    return f.read()


def _snippet(text: str) -> str:
  match = re.search(r"## Use a learned optimizer.*?```python\n(.*?)```", text, re.S)
  assert match, "README has no optax-loop snippet under 'Use a learned optimizer'"
  return match.group(1)


def _claimed(text: str) -> tuple[str, str]:
  """The learned optimizer's and Adam's printed losses as the README states them (digits before the '...')."""
  match = re.search(r"It prints `final training loss ([0-9.e-]+)\.\.\.`"
                    r".*?`optax\.adam\(1e-3\)` prints `([0-9.e-]+)\.\.\.`", text, re.S)
  assert match, "README does not state what its snippet prints"
  return match.group(1), match.group(2)


def _run(code: str) -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README snippet", "exec"), {"__name__": "readme_snippet"})  # pylint: disable=exec-used
  match = re.search(r"final training loss ([0-9.e-]+)", out.getvalue())
  assert match, f"the snippet printed {out.getvalue()!r}"
  return match.group(1)


@pytest.mark.parametrize("which", ["pretrained", "adam"])
def test_readme_snippet_prints_what_the_readme_says(which):
  text = _readme()
  code = _snippet(text)
  learned, adam = _claimed(text)
  if which == "adam":
    assert PRETRAINED_LINE.search(code), "the snippet no longer builds tx with lopt.pretrained.optimizer"
    code = PRETRAINED_LINE.sub("tx = optax.adam(1e-3)", code)
  printed = _run(code)
  claimed = learned if which == "pretrained" else adam
  assert printed.startswith(claimed), f"README says {claimed}..., the snippet prints {printed}"
