"""The commands the docs quote still run: every flag they pass exists and every config file they name is there.

Commands are collected from README.md, docs/*.md and the header comments of gin_configs/ (where each config says
how to run it). Each script's defined flags come from its own ``--help`` (absl or argparse), so a renamed or removed
flag fails here instead of in a reader's shell.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = re.compile(r"python ((?:experiments|benchmarks)/\w+\.py)")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z_]\w*)")
GIN_FILE = re.compile(r"--gin_config=([\w./-]+\.gin)")


def _sources() -> list[str]:
  files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
  return files + sorted(glob.glob(os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True))


def quoted_commands() -> list[tuple[str, str, str]]:
  """``(where, script, command text)`` for every quoted run of a script, continuation lines joined."""
  commands = []
  for path in _sources():
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    for number, line in enumerate(lines):
      for match in SCRIPT.finditer(line):
        text, follow = line[match.start():], number
        while text.rstrip().endswith("\\") and follow + 1 < len(lines):
          follow += 1
          text = text.rstrip()[:-1] + " " + lines[follow].lstrip("# ")
        commands.append((f"{os.path.relpath(path, ROOT)}:{number + 1}", match.group(1), text))
  return commands


COMMANDS = quoted_commands()


@pytest.fixture(scope="module")
def defined_flags() -> dict[str, set[str]]:
  """Each script's flags, read from its ``--help``; the scripts start concurrently (each imports jax)."""
  scripts = sorted({script for _, script, _ in COMMANDS})
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = {s: subprocess.Popen([sys.executable, os.path.join(ROOT, s), "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env) for s in scripts}
  flags = {}
  for script, proc in procs.items():
    out, _ = proc.communicate(timeout=300)
    flags[script] = set(re.findall(r"--(?:\[no\])?(\w+)", out))
    # absl exits 1 after --help, argparse 0; either way it must have printed its usage, not failed.
    assert "Traceback" not in out and "unrecognized" not in out and ("usage" in out or "--helpfull" in out), (
        f"{script} --help:\n{out[-2000:]}")
  return flags


def test_the_docs_quote_commands():
  scripts = {script for _, script, _ in COMMANDS}
  assert {"experiments/meta_train.py", "experiments/evaluate.py"} <= scripts


@pytest.mark.parametrize("where,script,command", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_quoted_command_uses_existing_flags_and_files(where, script, command, defined_flags):
  assert os.path.exists(os.path.join(ROOT, script)), f"{where}: {script} does not exist"
  unknown = sorted(set(FLAG.findall(command)) - defined_flags[script] - {"help", "helpfull"})
  assert not unknown, f"{where}: {script} has no flags {unknown}"
  for gin_file in GIN_FILE.findall(command):
    assert os.path.exists(os.path.join(ROOT, gin_file)), f"{where}: {gin_file} does not exist"
