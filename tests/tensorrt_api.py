"""The real TensorRT Python API on a machine without TensorRT, and a test double made from it.

TensorRT's Python bindings are small wheels on PyPI (``tensorrt-cu11-bindings`` for 10.x,
``tensorrt-cu12-bindings`` for 11.x; the package inside is ``tensorrt_bindings``). Their
``tensorrt.so`` links ``libnvinfer``, ``libnvinfer_plugin`` and ``libnvonnxparser`` but calls
only nine factory functions from them, so a stub library exporting those nine (each returning
null) lets the module import: every class, enum, method and property is there, and each
method's ``__doc__`` starts with its signature. Nothing can be built or run with it.

This module
- fetches a wheel with pip (registry only) into a cache directory and unpacks it;
- compiles the stub with gcc under the names the wheel links;
- imports the wheel in a child process (two versions of one extension cannot share a
  process, and the loader reads ``LD_LIBRARY_PATH`` only at start) and dumps its surface as
  JSON: enums and their members, classes with their bases, methods with every overload's
  parameters, properties (type, settable), module functions, and ``nptype`` of each DataType;
- makes a ``tensorrt`` module from that JSON (:func:`make_double`). The double records every
  call and refuses what the real version would refuse: a missing name or enum member
  (AttributeError, so ``hasattr`` probes answer as the real module does), an argument list
  no overload accepts, an argument of the wrong TensorRT class or enum, a write to a
  read-only property (TypeError). Results come from the test's ``answers`` or are empty
  values of the annotated return type; they only keep the calling code going.

Anything missing on the machine (pip cannot reach the registry, no gcc) raises
:class:`Unavailable` with the reason, which the tests turn into a skip.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional

# version label -> (PyPI project, exact version, soname major of the libraries it links)
WHEELS = {
    "10.13": ("tensorrt-cu11-bindings", "10.13.0.35", 10),
    "11.4": ("tensorrt-cu12-bindings", "11.4.0.106", 11),
}
LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")

# The nine symbols tensorrt.so imports from the TensorRT libraries (nm -D --undefined-only).
# Each factory returns null, which the bindings turn into a TypeError instead of a crash.
STUB_SOURCE = """\
void *createInferBuilder_INTERNAL(void *logger, int version) { return 0; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return 0; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return 0; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return 0; }
void *getPluginRegistry(void) { return 0; }
void *getBuilderPluginRegistry(int runtime_platform) { return 0; }
int initLibNvInferPlugins(void *logger, const char *namespace_) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
"""

# Runs in the child process with the wheel on PYTHONPATH and the stub on LD_LIBRARY_PATH;
# prints the surface as JSON.
DUMPER = r'''
import inspect, json, sys
import tensorrt_bindings as trt

def is_enum(obj):
    return isinstance(obj, type) and hasattr(obj, "__members__")

def own_classes():
    return {n: o for n, o in vars(trt).items() if isinstance(o, type) and not is_enum(o)
            and getattr(o, "__module__", "").startswith("tensorrt")}

def signatures(doc):
    """The signature lines a pybind11 docstring starts with (one per overload)."""
    lines = (doc or "").splitlines()
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        return [l.split(". ", 1)[1] for l in lines if l[:1].isdigit() and ". " in l]
    return lines[:1]

def record_enum(obj):
    return {k: int(v) for k, v in obj.__members__.items()}

def python_function(fn):
    sig = inspect.signature(fn)
    params = [{"name": p.name, "annotation": "", "default": p.default is not p.empty}
              for p in sig.parameters.values()]
    return [{"params": params, "returns": "", "text": str(sig)}]

surface = {"version": trt.__version__, "enums": {}, "classes": {}, "functions": {},
           "aliases": {}, "nptype": {}}
classes = own_classes()
names = {o: n for n, o in classes.items()}
for name, obj in vars(trt).items():
    if is_enum(obj):
        surface["enums"][name] = record_enum(obj)
    elif callable(obj) and not isinstance(obj, type) and not name.startswith("_"):
        if inspect.isfunction(obj):
            surface["functions"][name] = {"python": python_function(obj)}
        else:
            surface["functions"][name] = {"doc": signatures(obj.__doc__)}
    elif type(obj) in [o for o in vars(trt).values() if is_enum(o)]:
        surface["aliases"][name] = [type(obj).__name__, obj.name]
for name, cls in classes.items():
    entry = {"bases": [names[b] for b in cls.__bases__ if b in names], "methods": {},
             "static": {}, "properties": {}, "nested": {}}
    for key, value in vars(cls).items():
        if key.startswith("__") and key != "__init__" and key not in ("__getitem__", "__len__",
                                                                     "__enter__", "__exit__"):
            continue
        if is_enum(value):
            full = f"{name}.{key}"
            surface["enums"][full] = record_enum(value)
            entry["nested"][key] = full
        elif isinstance(value, property):
            entry["properties"][key] = {"doc": signatures(value.fget.__doc__ if value.fget
                                                          else ""),
                                        "settable": value.fset is not None}
        elif isinstance(value, staticmethod):
            entry["static"][key] = {"doc": signatures(value.__func__.__doc__)}
        elif callable(value):
            if inspect.isfunction(value):
                entry["methods"][key] = {"python": python_function(value)}
            else:
                entry["methods"][key] = {"doc": signatures(value.__doc__)}
    surface["classes"][name] = entry
for member_name, member in trt.DataType.__members__.items():
    try:
        import numpy as np
        surface["nptype"][member_name] = np.dtype(trt.nptype(member)).name
    except Exception:
        surface["nptype"][member_name] = None
json.dump(surface, sys.stdout, sort_keys=True)
'''


class Unavailable(Exception):
    """A third-party piece (the wheel, pip's registry, gcc) is missing; the reason says which."""


# --------------------------------------------------------------------------- fetching
def cache_root() -> Path:
    """Where wheels, stubs and dumped surfaces are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inception-infer" / "tensorrt-api"


def fetch_wheel(label: str, root: Path) -> Path:
    """The unpacked wheel of ``label`` (a key of :data:`WHEELS`), downloaded once with pip."""
    project, version, _ = WHEELS[label]
    target = root / f"{project}-{version}"
    if (target / "tensorrt_bindings" / "__init__.py").exists():
        return target
    download = root / "wheels"
    download.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--disable-pip-version-check", "-q", "-d", str(download),
                           f"{project}=={version}"], capture_output=True, text=True,
                          timeout=300)
    wheels = sorted(download.glob(f"{project.replace('-', '_')}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise Unavailable(f"pip could not fetch {project}=={version} from the package "
                          f"registry: {(proc.stderr or proc.stdout).strip()[-300:]}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extractall(partial)
    partial.rename(target)
    return target


def build_stub(major: int, root: Path) -> Path:
    """A directory holding the stub under the three library names of TensorRT ``major``."""
    libdir = root / f"stub-{major}"
    names = [libdir / f"{lib}.so.{major}" for lib in LIBRARIES]
    if all(p.exists() for p in names):
        return libdir
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise Unavailable("gcc is not installed: it compiles the stub TensorRT libraries that "
                          "let the real bindings import (apt-get install gcc)")
    libdir.mkdir(parents=True, exist_ok=True)
    source = libdir / "trt_stub.c"
    source.write_text(STUB_SOURCE)
    for path in names:
        tmp = path.with_name(path.name + ".tmp")
        proc = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(tmp), str(source)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise Unavailable(f"gcc could not compile the TensorRT stub: {proc.stderr[-300:]}")
        tmp.rename(path)
    return libdir


def dump_surface(label: str, root: Optional[Path] = None) -> dict:
    """The API surface of the real TensorRT ``label`` as a dict (cached as JSON under
    ``root``; the cache key includes the dumper, so changing it dumps again)."""
    root = Path(root) if root is not None else cache_root()
    project, version, major = WHEELS[label]
    key = hashlib.sha256(DUMPER.encode()).hexdigest()[:12]
    cached = root / f"surface-{version}-{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    wheel = fetch_wheel(label, root)
    libdir = build_stub(major, root)
    env = dict(os.environ, PYTHONPATH=str(wheel),
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(libdir),
                                                             os.environ.get("LD_LIBRARY_PATH")])))
    proc = subprocess.run([sys.executable, "-c", DUMPER], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"importing {project} {version} with the stub failed:\n"
                           f"{proc.stderr[-2000:]}")
    surface = json.loads(proc.stdout)
    tmp = cached.with_name(cached.name + ".tmp")
    tmp.write_text(json.dumps(surface, sort_keys=True))
    tmp.rename(cached)
    return surface


# --------------------------------------------------------------------------- signatures
_PREFIX = "tensorrt_bindings.tensorrt."


def split_top_level(text: str) -> list:
    """``"a: X, b: List[int, str] = (1, 2)"`` -> the parts at top-level commas."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    return parts + [tail] if tail else parts


def parse_signature(line: str) -> dict:
    """One pybind11 signature line -> ``{"params": [{name, annotation, default}],
    "returns": str, "text": line}``; ``self`` is kept as the first parameter."""
    open_at = line.find("(")
    depth, close_at = 0, -1
    for i in range(open_at, len(line)):
        depth += line[i] == "("
        depth -= line[i] == ")"
        if depth == 0:
            close_at = i
            break
    params = []
    for part in split_top_level(line[open_at + 1:close_at]):
        head, _, default = part.partition(" = ")
        name, _, annotation = head.partition(": ")
        params.append({"name": name.strip(), "annotation": annotation.strip(),
                       "default": bool(default)})
    returns = line[close_at + 1:].strip()
    return {"params": params, "returns": returns[3:].strip() if returns.startswith("->") else "",
            "text": line.strip()}


def overloads(entry: dict) -> list:
    """The overloads of a dumped method/function entry."""
    if "python" in entry:
        return entry["python"]
    return [parse_signature(line) for line in entry["doc"] if "(" in line]


# --------------------------------------------------------------------------- the double
class Call:
    """One recorded call: ``Class.method`` (or ``set Class.prop``), its arguments."""

    def __init__(self, what: str, args: tuple, kwargs: dict):
        self.what, self.args, self.kwargs = what, args, kwargs

    def __repr__(self):
        return f"{self.what}{self.args}{self.kwargs or ''}"


class EnumMember:
    """A member of a TensorRT enum: compares by enum and name, converts to its int."""

    def __init__(self, enum_name: str, name: str, value: int):
        self.enum_name, self.name, self.value = enum_name, name, value

    def __int__(self):
        return self.value

    __index__ = __int__

    def __eq__(self, other):
        return isinstance(other, EnumMember) and (other.enum_name, other.name) == \
            (self.enum_name, self.name)

    def __hash__(self):
        return hash((self.enum_name, self.name))

    def __repr__(self):
        return f"{self.enum_name.rsplit('.', 1)[-1]}.{self.name}"


class _Enum:
    """A TensorRT enum type: its members as attributes; any other name is an AttributeError."""

    def __init__(self, double, name: str, members: Dict[str, int]):
        self._double, self._name = double, name
        self.__members__ = {k: EnumMember(name, k, v) for k, v in members.items()}

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        members = self.__dict__.get("__members__", {})
        if item in members:
            return members[item]
        self._double.misses.append(f"{self._name}.{item}")
        raise AttributeError(f"TensorRT {self._double.__version__}: {self._name} has no "
                             f"member {item!r}")

    def __repr__(self):
        return f"<enum {self._name}>"


class TensorRTDouble:
    """The ``tensorrt`` module of one real version, made from its dumped surface.

    ``answers`` maps ``"Class.method"`` or ``"Class.property"`` to a function
    ``(obj, *args, **kwargs) -> value`` that replaces the empty result of that call.
    ``calls`` lists every call in order; ``misses`` the names asked for that do not exist.
    """

    def __init__(self, surface: dict, answers: Optional[Dict[str, Callable]] = None):
        self.surface = surface
        self.__version__ = surface["version"]
        self.__name__ = "tensorrt"
        # importlib.util.find_spec("tensorrt") answers from this when the double is installed
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.answers = dict(answers or {})
        self.calls: list = []
        self.misses: list = []
        self._enums = {name: _Enum(self, name, m) for name, m in surface["enums"].items()}
        self._classes: dict = {}
        for name in surface["classes"]:
            self._make_class(name)

    # ------------------------------------------------------------------ module attributes
    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        if item in self._enums:
            return self._enums[item]
        if item in self._classes:
            return self._classes[item]
        if item in self.surface["functions"]:
            return self._function(item)
        if item in self.surface["aliases"]:
            enum, member = self.surface["aliases"][item]
            return getattr(self._enums[enum], member)
        self.misses.append(item)
        raise AttributeError(f"TensorRT {self.__version__} has no attribute {item!r}")

    def names(self, what: str) -> list:
        """The recorded calls whose ``what`` is ``what``."""
        return [c for c in self.calls if c.what == what]

    def _function(self, name: str):
        sigs = overloads(self.surface["functions"][name])

        def function(*args, **kwargs):
            self._bind(name, sigs, args, kwargs, skip_self=False)
            self.calls.append(Call(name, args, kwargs))
            if name == "nptype":
                return self._nptype(*args, **kwargs)
            return self._answer(name, None, args, kwargs, sigs)
        function.__name__ = name
        return function

    def _nptype(self, member):
        import numpy as np
        found = self.surface["nptype"].get(member.name)
        if found is None:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy "
                            "datatype.")
        return np.dtype(found).type

    # ------------------------------------------------------------------ argument checks
    def _bind(self, what: str, sigs: list, args: tuple, kwargs: dict, skip_self: bool = True):
        """Raise TypeError unless one overload takes ``args``/``kwargs`` (names, count, and
        the TensorRT classes and enums they are annotated with)."""
        problems = []
        for sig in sigs:
            params = sig["params"][1:] if skip_self and sig["params"] and \
                sig["params"][0]["name"] == "self" else sig["params"]
            why = self._fits(params, args, kwargs)
            if why is None:
                return sig
            problems.append(f"  {sig['text']}: {why}")
        raise TypeError(f"TensorRT {self.__version__}: {what}() accepts none of its "
                        f"signatures for args={args!r} kwargs={kwargs!r}:\n" + "\n".join(problems))

    def _fits(self, params: list, args: tuple, kwargs: dict) -> Optional[str]:
        if any(p["name"].startswith("*") for p in params):
            return None
        if len(args) > len(params):
            return f"{len(args)} positional arguments, at most {len(params)} taken"
        names = [p["name"] for p in params]
        unknown = [k for k in kwargs if k not in names[len(args):]]
        if unknown:
            return f"no parameter named {unknown[0]!r}"
        for i, p in enumerate(params):
            if i < len(args):
                value = args[i]
            elif p["name"] in kwargs:
                value = kwargs[p["name"]]
            elif p["default"]:
                continue
            else:
                return f"missing argument {p['name']!r}"
            why = self._type_problem(p["annotation"], value)
            if why:
                return f"argument {p['name']!r}: {why}"
        return None

    def _type_problem(self, annotation: str, value) -> Optional[str]:
        name = annotation[len(_PREFIX):] if annotation.startswith(_PREFIX) else None
        if name in self._enums:
            if not (isinstance(value, EnumMember) and value.enum_name == name):
                return f"{value!r} is not a member of {name}"
        elif name in self._classes and not name.startswith("Dims"):
            if value is not None and not isinstance(value, self._classes[name]):
                return f"{type(value).__name__} is not a {name}"
        elif annotation in ("int", "typing.SupportsInt") and not hasattr(value, "__index__"):
            return f"{value!r} is not an int"
        elif annotation == "bool" and not isinstance(value, bool):
            return f"{value!r} is not a bool"
        elif annotation == "str" and not isinstance(value, str):
            return f"{value!r} is not a str"
        elif annotation in ("tuple", "list") and type(value).__name__ != annotation:
            return f"{type(value).__name__} is not a {annotation}"
        return None

    # ------------------------------------------------------------------ results
    def _answer(self, what: str, obj, args, kwargs, sigs):
        if what in self.answers:
            return self.answers[what](obj, *args, **kwargs)
        return self.empty(sigs[0]["returns"] if sigs else "")

    def empty(self, returns: str):
        """The placeholder result of a call annotated ``-> returns``."""
        name = returns[len(_PREFIX):] if returns.startswith(_PREFIX) else None
        if name in self._classes:
            return self._classes[name]._blank()
        if name in self._enums:
            return next(iter(self._enums[name].__members__.values()))
        return {"bool": True, "int": 0, "typing.SupportsInt": 0, "float": 0.0, "str": ""}.get(
            returns, [] if returns.lower().startswith("list[") else None)

    # ------------------------------------------------------------------ classes
    def _make_class(self, name: str):
        if name in self._classes:
            return self._classes[name]
        entry = self.surface["classes"][name]
        bases = tuple(self._make_class(b) for b in entry["bases"]) or (_Object,)
        namespace = {"_double": self, "_trt_name": name, "_entry": entry}
        for meth, info in entry["methods"].items():
            namespace[meth] = _method(self, name, meth, overloads(info))
        for meth, info in entry["static"].items():
            namespace[meth] = staticmethod(_method(self, name, meth, overloads(info),
                                                   static=True))
        for prop, info in entry["properties"].items():
            namespace[prop] = _property(self, name, prop, info)
        for nested, full in entry["nested"].items():
            namespace[nested] = self._enums[full]
        cls = type(name, bases, namespace)
        self._classes[name] = cls
        return cls


class _Object:
    """Base of every generated class: unknown attributes are misses, as on the real
    module; an instance made by the double itself (a return value) skips ``__init__``."""

    _double: TensorRTDouble
    _trt_name = "object"

    @classmethod
    def _blank(cls):
        obj = object.__new__(cls)
        obj.__dict__["_values"] = {}
        return obj

    def __init__(self, *args, **kwargs):
        raise TypeError(f"TensorRT {self._double.__version__}: {self._trt_name} has no "
                        "constructor")

    def __getattr__(self, item):
        if item.startswith("__") or item == "_values":
            raise AttributeError(item)
        self._double.misses.append(f"{self._trt_name}.{item}")
        raise AttributeError(f"TensorRT {self._double.__version__}: {self._trt_name} has no "
                             f"attribute {item!r}")

    def __setattr__(self, item, value):
        # a Python subclass (a logger) keeps its own attributes; a generated class only has
        # the properties of the real one
        if "_trt_name" not in type(self).__dict__ or hasattr(type(self), item):
            object.__setattr__(self, item, value)
            return
        self._double.misses.append(f"{self._trt_name}.{item}")
        raise AttributeError(f"TensorRT {self._double.__version__}: {self._trt_name} has no "
                             f"attribute {item!r}")


def _method(double: TensorRTDouble, cls_name: str, name: str, sigs: list, static=False):
    what = f"{cls_name}.{name}"

    def method(*args, **kwargs):
        obj, rest = (None, args) if static else (args[0], args[1:])
        double._bind(what, sigs, rest, kwargs, skip_self=not static)
        if name == "__init__":
            obj.__dict__.setdefault("_values", {})
        double.calls.append(Call(what, rest, kwargs))
        if name == "__init__":
            return None
        return double._answer(what, obj, rest, kwargs, sigs)
    method.__name__ = name
    method.__qualname__ = what
    return method


def _property(double: TensorRTDouble, cls_name: str, name: str, info: dict):
    what = f"{cls_name}.{name}"
    sigs = overloads(info)
    returns = sigs[0]["returns"] if sigs else ""

    def fget(obj):
        values = obj.__dict__.setdefault("_values", {})
        if name in values:
            return values[name]
        if what in double.answers:
            return double.answers[what](obj)
        return double.empty(returns)

    def fset(obj, value):
        if not info["settable"]:
            raise AttributeError(f"TensorRT {double.__version__}: {what} is read-only")
        why = double._type_problem(returns, value)
        if why:
            raise TypeError(f"TensorRT {double.__version__}: {what} = {value!r}: {why}")
        double.calls.append(Call(f"set {what}", (value,), {}))
        obj.__dict__.setdefault("_values", {})[name] = value

    return property(fget, fset)


def make_double(surface: dict, answers: Optional[Dict[str, Callable]] = None) -> TensorRTDouble:
    """A fresh ``tensorrt`` double of the version ``surface`` describes."""
    return TensorRTDouble(surface, answers)
