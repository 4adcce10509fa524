"""The project's modules depend on each other one way (DESIGN.md section 2): no import cycles,
`input_pipelines` never imports `bivrec_tf`, `bivrec_tf.layers` imports nothing of the project
outside itself, and `serving` talks to SavedModels and REST only, never to training or data code.

Every import statement counts, including those inside functions (an import deferred to break a
cycle is still a cycle).
"""

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bivrec_tf", "input_pipelines", "serving", "benchmarks")


def module_names(root: Path, packages=PACKAGES) -> Dict[str, Path]:
  """{dotted module name: file} for every .py file of the given top-level packages."""
  out = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = list(path.relative_to(root).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def import_graph(root: Path, packages=PACKAGES) -> Dict[str, Set[str]]:
  """{module: the project modules it imports}. `from a import b` points at `a.b` when that is a
  module, else at `a`; relative imports are resolved against the importing module."""
  modules = module_names(root, packages)
  graph = {}
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = name.split(".") if is_package else name.split(".")[:-1]
          anchor = anchor[: len(anchor) - (node.level - 1)]
          base = ".".join(anchor + ([base] if base else []))
        candidates = [
          f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
          for alias in node.names
        ]
      else:
        continue
      for target in candidates:
        # `import a.b.c` names a.b.c; keep the longest prefix that is a project module.
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
          parts.pop()
        if parts and ".".join(parts) != name:
          targets.add(".".join(parts))
    graph[name] = targets
  return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


@pytest.fixture(scope="module")
def graph():
  return import_graph(ROOT)


def _imports_of(graph, prefix):
  return {
    (m, t)
    for m, targets in graph.items()
    if m == prefix or m.startswith(prefix + ".")
    for t in targets
  }


def _under(module, prefix):
  return module == prefix or module.startswith(prefix + ".")


def test_the_import_graph_sees_the_project_imports(graph):
  # A parser that found nothing would pass every rule below.
  assert "bivrec_tf.builders" in graph["bivrec_tf.train"]
  assert "bivrec_tf.builders" in graph["bivrec_tf.export"]
  assert "input_pipelines.dataset" in graph["bivrec_tf.builders"]
  assert "bivrec_tf.layers.patching" in graph["bivrec_tf.layers.interests"]


def test_cycle_finder_reports_a_cycle_through_a_function_level_import(tmp_path):
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from pkg.b import f\n")
  (pkg / "b.py").write_text("def f():\n  from pkg import a\n")
  (pkg / "c.py").write_text("from . import a\n")
  g = import_graph(tmp_path, ("pkg",))
  assert g["pkg.c"] == {"pkg.a"}
  assert cycles(g) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles_between_project_modules(graph):
  assert cycles(graph) == []


def test_input_pipelines_never_import_bivrec_tf(graph):
  bad = {(m, t) for m, t in _imports_of(graph, "input_pipelines") if _under(t, "bivrec_tf")}
  assert not bad


def test_layers_import_nothing_of_the_project_outside_bivrec_tf_layers(graph):
  bad = {
    (m, t)
    for m, t in _imports_of(graph, "bivrec_tf.layers")
    if not _under(t, "bivrec_tf.layers") and t != "bivrec_tf"
  }
  assert not bad


def test_serving_never_imports_training_data_or_benchmark_code(graph):
  bad = {
    (m, t)
    for m, t in _imports_of(graph, "serving")
    if any(_under(t, p) for p in ("bivrec_tf", "input_pipelines", "benchmarks"))
  }
  assert not bad


def test_only_benchmarks_import_benchmarks(graph):
  bad = {
    (m, t)
    for m, targets in graph.items()
    if not _under(m, "benchmarks")
    for t in targets
    if _under(t, "benchmarks")
  }
  assert not bad
