"""Type aliases shared across lopt."""

from typing import Any, Mapping

import jax

PyTree = Any
Params = PyTree
MetaParams = PyTree
PRNGKey = jax.Array
Batch = PyTree
Metrics = Mapping[str, Any]
