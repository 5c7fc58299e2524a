"""The task registry: every task implements the interface, and only the tasks package names
a task (a new task is its module plus one line of ``TASKS``)."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import fedlease
from fedlease.configure import load_config
from fedlease.tasks import METRIC_LABELS, TASKS, Task, task_of
from fedlease.training import LocalTrainer

PACKAGE = Path(fedlease.__file__).parent


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_implements_the_interface(name):
    task = TASKS[name]
    assert isinstance(task, Task) and not inspect.isabstract(type(task))
    assert task.name == name
    assert task.columns[0] == task.metric and METRIC_LABELS[task.metric] == task.metric_label
    assert isinstance(task.has_head, bool) and isinstance(task.auto_class, str)
    assert task.peft_task_type is None or isinstance(task.peft_task_type, str)
    assert set(task.model_uses) <= {"predict", "generate"} and task.model_uses
    # its trainer: a LocalTrainer that implements every member the algorithms call
    module = importlib.import_module(type(task).__module__)
    trainers = [cls for cls in vars(module).values() if isinstance(cls, type)
                and issubclass(cls, LocalTrainer) and cls.__module__ == module.__name__]
    assert len(trainers) == 1 and not inspect.isabstract(trainers[0])
    # its defaults are config keys, applied when a config names the task
    config = load_config(overrides={"model": {"task": name}})
    assert task_of(config) is task
    for section, values in task.defaults.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value


def test_the_trainer_interface_is_declared():
    assert {"num_train", "num_test", "new_head", "batches", "loss", "representations",
            "evaluate"} <= LocalTrainer.__abstractmethods__


def test_an_unknown_task_is_a_config_error():
    from fedlease.errors import ConfigError

    with pytest.raises(ConfigError, match="model.task = 'regression': expected one of "
                                          "classification, generation"):
        load_config(overrides={"model": {"task": "regression"}})


def task_names_outside_tasks():
    """``path:line`` of every string constant naming a task outside ``fedlease/tasks/``, but
    the default of ``ModelConfig.task``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("tasks/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in TASKS:
                found.append(f"{relative}:{node.lineno}")
    return found


def test_no_module_outside_the_tasks_package_names_a_task():
    """No comparison with ``"generation"``, no table keyed by task name: ask the task."""
    found = task_names_outside_tasks()
    default = [place for place in found if place.startswith("config/schema.py:")]
    assert len(default) == 1, default  # ModelConfig.task = "classification"
    assert [place for place in found if place not in default] == []


def task_classes() -> set[str]:
    """The names of the classes the task modules define (each task and its trainer)."""
    return {name for task in TASKS.values()
            for name, value in vars(importlib.import_module(type(task).__module__)).items()
            if isinstance(value, type) and value.__module__ == type(task).__module__}


def task_classes_outside_tasks(package: Path = PACKAGE):
    """``path:line`` of every use of a task module's class outside ``fedlease/tasks/``: an
    import of it, an ``isinstance``/``issubclass`` against it, any other mention."""
    classes = task_classes()
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("tasks/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.ImportFrom)
                     else [node.id] if isinstance(node, ast.Name)
                     else [node.attr] if isinstance(node, ast.Attribute) else [])
            if classes & set(names):
                found.append(f"{relative}:{node.lineno}")
    return found


def test_no_module_outside_the_tasks_package_checks_a_task_class():
    """No ``isinstance(task, GenerationTask)``: ask the task what it supports."""
    assert {"ClassificationTask", "GenerationTask"} <= task_classes()
    assert task_classes_outside_tasks() == []


def test_the_class_guard_finds_a_class_check(tmp_path):
    probe = ("from fedlease.tasks.generation import GenerationTask\n\n\n"
             "def f(task):\n    return isinstance(task, GenerationTask)\n")
    (tmp_path / "probe.py").write_text(probe)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "own.py").write_text("isinstance(t, GenerationTask)\n")  # allowed
    assert task_classes_outside_tasks(tmp_path) == ["probe.py:1", "probe.py:5"]
