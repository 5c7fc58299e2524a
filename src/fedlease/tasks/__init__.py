"""Tasks, by the name a config gives as ``model.task``: what the clients learn to do.

A task is one module of this package (its ``Task`` subclass and trainer) and one entry here;
the rest of the package asks the run's task (``task_of``) and never branches on its name.
"""

from fedlease.registry import Registry
from fedlease.tasks.base import Task
from fedlease.tasks.classification import ClassificationTask
from fedlease.tasks.generation import GenerationTask

TASKS: Registry[Task] = Registry(
    "model.task", {task.name: task for task in (ClassificationTask(), GenerationTask())})

# each task's primary metric as plots and comparisons name it
METRIC_LABELS = {task.metric: task.metric_label for task in TASKS.values()}


def task_of(config) -> Task:
    """The task of a run (a ``RunConfig``, validated)."""
    return TASKS[config.model.task]


__all__ = ["METRIC_LABELS", "TASKS", "Task", "task_of"]
