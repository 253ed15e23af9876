"""What the tests that start ``experiments/meta_train.py`` as a real process share: the script and a tiny run."""

import os

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "meta_train.py")

# ff with one hidden layer of 8 on 4-dimensional quadratics: compiles and steps in about a second.
TINY_RUN_BINDINGS = [
    "meta_train.task_sampler = @task_samplers.fixed()",
    "task_samplers.fixed.task_family = @task_families.quadratic()",
    "task_families.quadratic.dim = 4",
    "meta_train.architecture = @architectures.ff()",
    "architectures.ff.hidden_sizes = (8,)",
]
