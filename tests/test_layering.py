"""The dependency rule of ARCHITECTURE.md, checked on the import graph (grimp).

Every import counts, including those inside functions: a lazy import still reaches up the
layers or closes a cycle, it only hides it from the interpreter until the call.

Layers, top first; a module may import its own layer and the layers below, never above:

- api: ``engine`` (the package façade, lazy names only);
- apps: the CLI and its commands, the study, parity checks, Triton Inference Server export,
  its guard process, the KServe manifest and serve-tune with its load generator;
- loader: ``engine.loader`` (``engine.load``) and ``engine.evaluation`` (a model over a
  labelled set, on one engine);
- engines: ``engine.backends`` and ``calibration``, independent of each other;
- core: the ``engine`` modules named in the table (errors, file I/O, ONNX metadata, models,
  preprocessing, data, the labelled sets, weights, export, timing, the runtime base class,
  graph checks);
- kernels: a leaf that imports only torch, triton, numpy and the standard library.

Every module must be placed: a new ``engine`` module in no list fails
``test_every_project_module_has_a_layer`` until the table names it.
"""
from __future__ import annotations

import sys
import textwrap

import grimp
import pytest

LAYERS = [
    ("api", ["engine$"]),
    ("apps", ["engine.__main__", "engine.cli", "engine.commands", "engine.study", "engine.anchors",
              "engine.parity", "engine.tritonserver", "engine.tritonguard",
              "engine.kserve", "engine.servetune", "engine.loadgen"]),
    ("loader", ["engine.loader", "engine.evaluation"]),
    ("engines", ["engine.backends", "calibration"]),
    ("core", ["engine.errors", "engine.fileio", "engine.onnxmeta", "engine.version", "engine.runtime",
              "engine.timing", "engine.export", "engine.weights", "engine.preprocess", "engine.datasets",
              "engine.graphcheck", "engine.intervals", "engine.evaldata", "engine.models"]),
    ("kernels", ["kernels"]),
]
INDEPENDENT = [("engine.backends", "calibration")]
KERNEL_DEPENDENCIES = {"torch", "triton", "numpy"}


# --------------------------------------------------------------------------- the checks
def _matches(module: str, pattern: str) -> bool:
    """``a.b``: the module and its submodules; ``a.*``: only the submodules; ``a$``: only a."""
    if pattern.endswith("$"):
        return module == pattern[:-1]
    if pattern.endswith(".*"):
        return module.startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def layer_of(module: str, layers=LAYERS) -> int:
    """Index of the layer ``module`` belongs to (0 is the top); the most specific pattern
    wins, so ``engine.*`` only takes what no other entry names."""
    best, best_len = None, -1
    for i, (_, patterns) in enumerate(layers):
        for p in patterns:
            if _matches(module, p):
                size = len(p.rstrip("$").rstrip(".*")) + (0 if p.endswith(".*") else 1)
                if size > best_len:
                    best, best_len = i, size
    if best is None:
        raise KeyError(f"{module} is in no layer")
    return best


def layer_violations(graph, layers=LAYERS, independent=INDEPENDENT):
    """``(importer, imported, line)`` for every import that goes up a layer or joins two
    independent siblings."""
    out = []
    for m in sorted(graph.modules):
        for dep in sorted(graph.find_modules_directly_imported_by(m)):
            if dep not in graph.modules:
                continue
            bad = layer_of(dep, layers) < layer_of(m, layers) or any(
                (_matches(m, a) and _matches(dep, b)) or (_matches(m, b) and _matches(dep, a))
                for a, b in independent)
            if bad:
                lines = [d["line_number"] for d in graph.get_import_details(importer=m, imported=dep)]
                out.append((m, dep, lines[0] if lines else None))
    return out


def import_cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []
    counter = [0]
    edges = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d in graph.modules)
             for m in graph.modules}

    def visit(v):
        work = [(v, iter(edges[v]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges[w])))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return comps


def _project_graph(external=False):
    return grimp.build_graph("engine", "calibration", "kernels",
                             include_external_packages=external, cache_dir=None)


# --------------------------------------------------------------------------- the project
@pytest.fixture(scope="module")
def project():
    return _project_graph()


def test_no_import_goes_up_a_layer(project):
    bad = layer_violations(project)
    assert not bad, "imports against the dependency rule (importer -> imported, line):\n" + \
        "\n".join(f"  {a} -> {b} (line {n})" for a, b, n in bad)


def test_no_import_cycles(project):
    cycles = import_cycles(project)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in cycles)


def test_kernels_are_a_leaf():
    g = _project_graph(external=True)
    allowed = KERNEL_DEPENDENCIES | set(sys.stdlib_module_names)
    bad = {(m, d) for m in g.modules if m.startswith("kernels")
           for d in g.find_modules_directly_imported_by(m)
           if not d.startswith("kernels") and d.split(".")[0] not in allowed}
    assert not bad, f"kernels import outside torch/triton/numpy/stdlib: {sorted(bad)}"


def test_every_project_module_has_a_layer(project):
    unplaced = []
    for m in sorted(project.modules):
        try:
            layer_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, ("modules in no layer of tests/test_layering.py (add each to LAYERS and to "
                          f"ARCHITECTURE.md): {unplaced}")


def test_every_layer_pattern_names_a_module(project):
    """No stale entry: each pattern of the table covers at least one module."""
    stale = [p for _, patterns in LAYERS for p in patterns
             if not any(_matches(m, p) for m in project.modules)]
    assert not stale, f"patterns that match no module: {stale}"


def test_an_unplaced_module_is_caught():
    with pytest.raises(KeyError, match="engine.brand_new is in no layer"):
        layer_of("engine.brand_new")
    assert layer_of("engine.models.brand_new") == layer_of("engine.errors")
    assert layer_of("engine.backends.brand_new") < layer_of("engine.errors")


# --------------------------------------------------------------------------- the checks catch faults
def _throwaway(tmp_path, monkeypatch, files):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return grimp.build_graph("toy", cache_dir=None)


TOY_LAYERS = [("apps", ["toy.app"]), ("engines", ["toy.eng", "toy.cal"]), ("core", ["toy.*"])]


def test_a_planted_upward_import_inside_a_function_is_caught(tmp_path, monkeypatch):
    g = _throwaway(tmp_path, monkeypatch, {
        "toy/__init__.py": "",
        "toy/core.py": "def f():\n    from . import app  # hidden in a function\n",
        "toy/app.py": "from . import core\n",
        "toy/eng.py": "from . import core\n",
        "toy/cal.py": "from . import core\n",
    })
    bad = layer_violations(g, TOY_LAYERS, independent=[("toy.eng", "toy.cal")])
    assert bad == [("toy.core", "toy.app", 2)]
    assert import_cycles(g) == [["toy.app", "toy.core"]]


def test_a_planted_sibling_import_is_caught_and_a_clean_toy_passes(tmp_path, monkeypatch):
    files = {"toy/__init__.py": "", "toy/core.py": "import os\n",
             "toy/app.py": "from . import eng, cal\n", "toy/eng.py": "from . import core\n",
             "toy/cal.py": "from . import core\n"}
    g = _throwaway(tmp_path, monkeypatch, files)
    assert layer_violations(g, TOY_LAYERS, independent=[("toy.eng", "toy.cal")]) == []
    assert import_cycles(g) == []
    (tmp_path / "toy" / "cal.py").write_text("from . import core\nfrom .eng import x\n")
    g = grimp.build_graph("toy", cache_dir=None)
    assert layer_violations(g, TOY_LAYERS, independent=[("toy.eng", "toy.cal")]) == \
        [("toy.cal", "toy.eng", 2)]
