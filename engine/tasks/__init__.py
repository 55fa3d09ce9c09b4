"""The task registry: one object per task, the one vocabulary of every surface.

Each task is a module of this package (its `TASK` object, engine/tasks/base.py says what
a task declares); the registry below is the only list of them. Everything else asks a
task object (`get_task(name)`) and never branches on a task's name.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError

from . import deblur, denoise, inpaint, sr
from .base import FILE_INPUTS, INPUT_PARAMS, Degradation, Task, TaskInputs

#: name -> task, in display order. A new task: its module, and one line here.
TASKS: dict[str, Task] = {
    deblur.TASK.name: deblur.TASK,
    sr.TASK.name: sr.TASK,
    inpaint.TASK.name: inpaint.TASK,
    denoise.TASK.name: denoise.TASK,
}

__all__ = [
    "FILE_INPUTS", "INPUT_PARAMS", "TASKS", "Degradation", "Task", "TaskInputs", "build_operator", "get_task",
    "make_measurement", "register_task", "task_names", "task_of",
]  # fmt: skip


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: Any) -> Task:
    """The task called `name` (a Task is returned as it is).

    Raises:
        DiffPIRError: an unknown name, with the known ones.
    """
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise DiffPIRError(f"task: expected one of {', '.join(TASKS)}, got {name!r}") from None


def task_of(operator: Any) -> Optional[Task]:
    """The task whose operator this is (by its class), or None (an operator of no task, or one already
    wrapped in a boundary model)."""
    kind = type(operator).__name__
    return next((task for task in TASKS.values() if task.operator_type == kind), None)


def register_task(task: Task) -> Task:
    """Add a task to the registry (the one line a new task module needs); returns it."""
    if not isinstance(task, Task) or not task.name:
        raise DiffPIRError(f"register_task: expected a named Task, got {task!r}")
    TASKS[task.name] = task
    return task


def build_operator(task: str, kernel: Any = None, mask: Any = None, scale: Any = None) -> Any:
    """The operator of `task` from arrays (see Task.operator)."""
    return get_task(task).operator(kernel=kernel, mask=mask, scale=scale)


def make_measurement(task: str, x: np.ndarray, *, sigma_n: float, noise_seed: int, **options: Any) -> Degradation:
    """The official DiffPIR measurement of a clean (H, W, C) float64 image in [0, 1] (Task.measure).

    options: kernel ('gaussian', 'motion' or an array), kernel_index, kernel_size (deblur);
    scale (sr); mask ('box', 'random' or an array), mask_seed, box, box_margin, random_p
    (inpaint). A task reads its own and ignores the others, so one call serves every task.
    """
    return get_task(task).measure(x, sigma_n=sigma_n, noise_seed=noise_seed, **options)
