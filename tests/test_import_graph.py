"""The import graph of ``lopt/``: no cycle, and no import from a lower layer into a higher one.

Every ``import`` statement of every module (function-level ones too: a lazy import still ties the two modules
together) is read with ``ast``; ``from lopt.x import y`` counts as an import of the submodule ``lopt.x.y`` when it
exists, else of the package ``lopt.x`` (its ``__init__``).
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lopt")

# Lowest first. A module may import modules of its own layer and of lower ones only.
LAYERS: list[tuple[str, ...]] = [
    ("lopt.types", "lopt.arguments", "lopt.registry", "lopt.workdir", "lopt.progress",
     "lopt.compilation_cache"),  # foundations
    ("lopt.checkpoints", "lopt.writers", "lopt.locks"),  # persistence, metric writers, run-directory locks
    ("lopt.tasks",),  # inner problems
    ("lopt.architectures",),  # learned optimizers and hand-designed baselines
    ("lopt.pretrained",),  # shipped meta-trained optimizers (architectures + weights)
    ("lopt.meta_trainers",),  # estimators and the outer loop
    ("lopt.evaluation",),  # scoring optimizers, meta_train's evaluation hooks
    ("lopt.config",),  # gin at the edges: registers meta_train and the hooks, parses strictly
    ("lopt.runs",),  # run directories: running, evaluating, loading, sweeps
    ("lopt",),  # the front door
]


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
  found = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        found[_module_name(path)] = path
  return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The lopt module ``name`` refers to: itself, or the nearest enclosing package that exists."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imports(module: str) -> set[str]:
  with open(MODULES[module], encoding="utf-8") as f:
    tree = ast.parse(f.read())
  package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    else:
      continue
    for target in targets:
      if target == "lopt" or target.startswith("lopt."):
        resolved = _resolve(target)
        if resolved and resolved != module:
          out.add(resolved)
  return out


GRAPH = {module: _imports(module) for module in MODULES}


def layer_of(module: str) -> int:
  """The index in ``LAYERS`` of the most specific prefix of ``module``."""
  best, best_length = None, -1
  for index, prefixes in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
        best, best_length = index, len(prefix)
  if best is None:
    raise AssertionError(f"{module} is in no layer of LAYERS; add it there.")
  return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of ``graph`` as a list of modules (first == last), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_graph_is_read():
  assert "lopt.meta_trainers.outer_loop" in GRAPH and "lopt.checkpoints" in GRAPH["lopt.meta_trainers.outer_loop"]
  assert "lopt.tasks.splits" in GRAPH["lopt.tasks.loaders"]


def test_no_import_cycle():
  # lopt/__init__ imports everything and nothing imports it; every other cycle is a real one.
  assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_cycle_finder_finds_cycles():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_into_a_higher_layer(module):
  higher = [target for target in GRAPH[module] if layer_of(target) > layer_of(module)]
  assert not higher, (f"{module} (layer {layer_of(module)}) imports {higher} from a higher layer; the layer order "
                      "is LAYERS in this test.")
