"""The char_rnn family under meta-training: its LAPACK-free orthogonal initialiser and a guarded PES meta-step.

PES meta-training on char_rnn used to deadlock on the CPU (flax's orthogonal initialiser runs a batched LAPACK QR,
which jaxlib fans out over the XLA thread pool it is already running on; see ``lopt/tasks/char_rnn.py``). The
meta-steps therefore run in a subprocess with a timeout, so that a regression fails instead of blocking the suite.
That test is ``slow`` (it compiles a PES step, ~25 s of CPU); the default suite keeps the deterministic guard in
``test_task_conformance.py`` that no family's init or loss contains a LAPACK call.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks
from lopt.tasks.char_rnn import orthogonal

# A healthy run of the script below takes 15-45 s on 2 busy cores (mostly compilation); a deadlock never finishes.
META_STEP_TIMEOUT_S = 240
_orthogonal = jax.jit(orthogonal, static_argnums=1)


@pytest.mark.parametrize("shape", [(12, 12), (16, 5), (5, 16)])
def test_orthogonal_has_orthonormal_columns_or_rows(shape):
  q = np.asarray(_orthogonal(jax.random.key(0), shape))
  assert q.shape == shape
  gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
  np.testing.assert_allclose(gram, np.eye(min(shape)), atol=1e-5)
  np.testing.assert_array_equal(q, _orthogonal(jax.random.key(0), shape))
  assert not np.allclose(q, _orthogonal(jax.random.key(1), shape))


def test_orthogonal_is_haar_like_the_lapack_initialiser():
  # For a Haar-random orthogonal matrix, E[Q] = 0 and E[Q_ij^2] = 1/n; compare both with jax's QR-based one.
  n, draws = 4, 1000
  keys = jax.random.split(jax.random.key(2), draws)
  ours = np.asarray(jax.jit(jax.vmap(lambda k: orthogonal(k, (n, n))))(keys))
  reference = np.asarray(jax.jit(jax.vmap(lambda k: jax.random.orthogonal(k, n)))(keys))
  for sample in (ours, reference):
    assert np.abs(sample.mean(axis=0)).max() < 0.08
    np.testing.assert_allclose((sample**2).mean(axis=0), 1.0 / n, atol=0.02)


def test_orthogonal_rejects_non_matrix_shapes():
  with pytest.raises(ValueError, match="2-D"):
    orthogonal(jax.random.key(0), (2, 3, 4))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_kernels_start_orthogonal(cell):
  family = tasks.char_rnn(cell=cell, hidden_size=8, embed_size=4, seq_len=4, batch_size=2)
  params = jax.jit(family.task({"init_scale": jnp.float32(1.0)}).init)(jax.random.key(0))
  cell_params = params[next(k for k in params if "Cell" in k)]
  recurrent = [v["kernel"] for k, v in cell_params.items() if k.startswith("h")]
  assert len(recurrent) == (3 if cell == "gru" else 4)
  for kernel in recurrent:
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(8), atol=1e-5)


@pytest.mark.slow
def test_pes_meta_steps_on_char_rnn_finish_in_a_subprocess():
  # The sizes of the run that deadlocked (GRU with three recurrent kernels, 8 tasks, truncations of 10); with
  # flax's QR-based initialiser this script hung in 2 of 3 runs on a 2-core machine, within 30 steps.
  script = textwrap.dedent("""
      import jax, numpy as np
      from lopt import tasks
      from lopt.architectures.ff import ff
      from lopt.meta_trainers.pes import pes

      family = tasks.char_rnn(cell="gru")
      arch = ff(hidden_sizes=(32, 32))
      est = pes(num_tasks=8, truncation_length=10, horizon=100)
      theta = arch.init(jax.random.key(0))
      state = est.init(theta, jax.random.key(1), task_family=family, learned_optimizer=arch)
      step = jax.jit(lambda t, s, k: est.estimate(t, s, k, task_family=family, learned_optimizer=arch))
      resets = 0
      for i in range(30):
        grad, state, metrics = step(theta, state, jax.random.key(2 + i))
        resets += int(metrics["resets"])
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grad))
      print("resets", resets)
  """)
  try:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=META_STEP_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired:
    pytest.fail(f"PES meta-steps on char_rnn did not finish in {META_STEP_TIMEOUT_S} s (deadlock?)")
  assert out.returncode == 0, out.stderr[-3000:]
  # Staggered first episodes of 1-10 truncations: every task resets within the 30 steps, inside the jitted step.
  resets = int(out.stdout.split("resets")[-1])
  assert resets >= 8, out.stdout
