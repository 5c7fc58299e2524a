"""Algorithms, tasks, data sources and aggregation rules from outside the package.

A third-party package adds to fedlease's registries in one of two ways (docs/extending.md):

* an entry point in its ``pyproject.toml``, found when a config is loaded, so it reaches
  ``fedlease run``, ``fedlease compare``, ``fedlease list`` and the Flower apps without any
  code of the user's::

      [project.entry-points."fedlease.algorithms"]
      fedprox = "fedprox_plugin:FedProx"

* a call to ``register_algorithm`` (``register_task``, ``register_source``,
  ``register_aggregation``) before ``fedlease.run(config)``, for code that drives fedlease from
  Python.

Groups and what their object is: ``fedlease.algorithms``: an ``Algorithm`` subclass (named by
its ``name``); ``fedlease.tasks``: a ``Task`` (instance or class; named by its ``name``);
``fedlease.sources``: a ``DataSource`` (named by the entry point); ``fedlease.aggregations``: an
aggregation rule ``(tensors, weights) -> tensor`` (named by the entry point).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from fedlease.algorithms import ALGORITHMS, Algorithm
from fedlease.algorithms.aggregation import AGGREGATION_RULES, AggregationRule
from fedlease.algorithms.clustering import SIGNALS
from fedlease.data.partitioners import PARTITIONERS
from fedlease.data.sources import SOURCES, DataSource
from fedlease.errors import ConfigError
from fedlease.registry import Registry
from fedlease.tasks import METRIC_LABELS, TASKS, Task


def _claim(registry: Registry, kind: str, name: str, entry) -> None:
    """Register ``entry`` under ``name`` unless another entry holds it already (the same entry
    again, as a second ``load_plugins`` after a failed one finds it, changes nothing)."""
    if not isinstance(name, str) or not name or any(c.isspace() or c in "+,=" for c in name):
        raise ConfigError(f"{kind} name {name!r}: expected a non-empty name without spaces, "
                          "'+', ',' or '=' (they separate compare's variants)")
    if name in registry:
        if registry[name] is not entry:
            raise ConfigError(f"{kind} {name!r} is registered already ({registry[name]!r}); "
                              "choose another name")
        return
    registry.register(name, entry)


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Make ``cls`` (an ``Algorithm`` subclass) a ``federation.algorithm`` by its ``name``;
    returns it, so it works as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ConfigError(f"algorithm {cls!r}: expected a subclass of "
                          "fedlease.algorithms.Algorithm")
    _claim(ALGORITHMS, "algorithm", cls.name, cls)
    return cls


def register_task(task: Task | type[Task]) -> Task:
    """Make ``task`` (a ``Task``, or its class) a ``model.task`` by its ``name``."""
    if isinstance(task, type) and issubclass(task, Task):
        task = task()
    if not isinstance(task, Task):
        raise ConfigError(f"task {task!r}: expected a fedlease.tasks.Task")
    if task.name in TASKS and type(TASKS[task.name]) is type(task):
        return TASKS[task.name]
    _claim(TASKS, "task", task.name, task)
    METRIC_LABELS.setdefault(task.metric, task.metric_label)
    return task


def register_source(name: str, source: DataSource) -> DataSource:
    """Make ``source`` (a ``DataSource``: its loader and what it reads of ``[data]``) a
    ``data.source`` named ``name``."""
    if not isinstance(source, DataSource):
        raise ConfigError(f"data source {name!r}: expected a fedlease.data.sources.DataSource, "
                          f"got {type(source).__name__}")
    _claim(SOURCES, "data source", name, source)
    return source


def register_aggregation(name: str, rule: AggregationRule) -> AggregationRule:
    """Make ``rule`` (``(tensors of one key, the clients' weights) -> tensor``) a
    ``federation.aggregation`` named ``name``."""
    if not callable(rule):
        raise ConfigError(f"aggregation {name!r}: expected a function (tensors, weights) -> "
                          "tensor")
    if name not in AGGREGATION_RULES or AGGREGATION_RULES[name](0.0) is not rule:
        _claim(AGGREGATION_RULES, "aggregation", name, _fixed(rule))
    return rule


def _fixed(rule: AggregationRule) -> Callable[[float], AggregationRule]:
    """A rule as the registry holds it: made from ``federation.trim_fraction`` (unused here)."""
    return lambda trim_fraction: rule


# entry-point group -> how its object is registered (entry point name, object)
ENTRY_POINT_GROUPS: dict[str, Callable[[str, object], object]] = {
    "fedlease.algorithms": lambda name, obj: register_algorithm(obj),
    "fedlease.tasks": lambda name, obj: register_task(obj),
    "fedlease.sources": register_source,
    "fedlease.aggregations": register_aggregation,
}

_loaded = False


def load_plugins() -> None:
    """Register what every installed package declares under ``ENTRY_POINT_GROUPS`` (once per
    process); a plugin that fails to import or register is a ``ConfigError`` naming it."""
    global _loaded
    if _loaded:
        return
    for group, register in ENTRY_POINT_GROUPS.items():
        for point in entry_points(group=group):
            where = f"plugin {point.name!r} ({group}: {point.value}" + (
                f", package {point.dist.name})" if point.dist is not None else ")")
            try:
                register(point.name, point.load())
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            except Exception as err:  # a plugin's own bug: name it, not fedlease
                raise ConfigError(f"{where} cannot be loaded: {type(err).__name__}: {err}") \
                    from None
    _loaded = True


def _first_line(*docs: str | None) -> str:
    """The first sentence-line of the first non-empty docstring."""
    for doc in docs:
        if doc and doc.strip():
            text = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
            return text.split(". ")[0].rstrip(".")
    return ""


def _module_doc(obj) -> str | None:
    return getattr(sys.modules.get(getattr(obj, "__module__", ""), None), "__doc__", None)


def registry_listing(kind: str) -> list[tuple[str, str]]:
    """(name, what it is) of every entry a config may name for ``kind``: ``algorithms``
    (federation.algorithm), ``tasks`` (model.task), ``sources`` (data.source),
    ``partitioners`` ([[data.datasets]] partitioner), ``signals`` (federation.allocation),
    ``aggregations`` (federation.aggregation); plugins included."""
    load_plugins()
    if kind == "algorithms":
        return [(name, _first_line(cls.__doc__ if cls.__doc__ != Algorithm.__doc__ else None,
                                   _module_doc(cls))) for name, cls in ALGORITHMS.items()]
    if kind == "tasks":
        return [(name, f"metric {task.metric}; " + _first_line(type(task).__doc__))
                for name, task in TASKS.items()]
    if kind == "sources":
        return [(name, _first_line(source.load.__doc__)) for name, source in SOURCES.items()]
    if kind == "partitioners":
        return [(name, _first_line(function.__doc__)) for name, function in PARTITIONERS.items()]
    if kind == "signals":
        return [(name, f"clusters clients by {signal.title}: {signal.distance_name}")
                for name, signal in SIGNALS.items()]
    if kind == "aggregations":
        return [(name, _first_line(getattr(factory(0.2), "func", factory(0.2)).__doc__))
                for name, factory in AGGREGATION_RULES.items()]
    raise ConfigError(f"fedlease list {kind!r}: expected one of algorithms, tasks, sources, "
                      "partitioners, signals, aggregations")
