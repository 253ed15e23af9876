"""Inner training problems: tasks, task families, task samplers and the data they train on.

The plugin modules are imported here explicitly, so that which families and samplers are registered never depends
on the configuration.
"""

from lopt.tasks import data
from lopt.tasks import loaders
from lopt.tasks import text
from lopt.tasks.augment import bfloat16, reduced_batch, reparametrize
from lopt.tasks.autoencoder import autoencoder
from lopt.tasks.base import SPLITS, Task, TaskFamily, TaskSampler
from lopt.tasks.char_rnn import char_rnn
from lopt.tasks.classic_2d import classic_2d
from lopt.tasks.image_conv import image_conv
from lopt.tasks.image_mlp import image_mlp
from lopt.tasks.quadratic import quadratic
from lopt.tasks.samplers import fixed, mixture, parametric
from lopt.tasks.polymorphic import autoencoder_structures, mlp_structures, quadratic_structures, structures
from lopt.tasks.transformer_lm import transformer_lm

__all__ = [
    "SPLITS",
    "Task",
    "TaskFamily",
    "TaskSampler",
    "autoencoder",
    "autoencoder_structures",
    "bfloat16",
    "char_rnn",
    "classic_2d",
    "data",
    "fixed",
    "image_conv",
    "image_mlp",
    "loaders",
    "mixture",
    "mlp_structures",
    "parametric",
    "quadratic",
    "quadratic_structures",
    "reduced_batch",
    "reparametrize",
    "structures",
    "text",
    "transformer_lm",
]
