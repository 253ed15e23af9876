"""Inner training problems: tasks, task families, task samplers and the data they train on.

The plugin modules are imported here explicitly, so that which families and samplers are registered never depends
on the configuration.
"""

from lopt.tasks import data
from lopt.tasks.base import SPLITS, Task, TaskFamily, TaskSampler
from lopt.tasks.image_mlp import image_mlp
from lopt.tasks.quadratic import quadratic
from lopt.tasks.samplers import fixed

__all__ = [
    "SPLITS",
    "Task",
    "TaskFamily",
    "TaskSampler",
    "data",
    "fixed",
    "image_mlp",
    "quadratic",
]
