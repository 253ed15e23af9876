"""Padded structures: every architecture and every structure-polymorphic family behaves on a padded structure as on
the same structure unpadded (the unpadded reference is written here directly on the active blocks)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt  # noqa: F401  (registers every plugin)
from lopt import registry
from lopt.architectures import masked_stats
from lopt.tasks import polymorphic

jax.config.update("jax_enable_x64", False)

NUM_STEPS = 4
# Active blocks of the small problem both paths train: w is (3, 5) inside (4, 8), b is (5,) inside (8,).
X = jax.random.normal(jax.random.key(10), (16, 3))
C = jax.random.normal(jax.random.key(11), (5, 2))


def _unpadded_loss(params):
  hidden = jnp.tanh(X @ params["w"] + params["b"])
  return jnp.mean(jnp.square(hidden @ C - 1.0)) + 0.5 * jnp.sum(jnp.square(params["v"] - 0.3))


def _slice(padded):
  return {"w": padded["w"][:3, :5], "b": padded["b"][:5], "v": padded["v"]}


def _padded_problem():
  """Unpadded params, the padded ones (garbage in inactive entries and a fully inactive tensor) and the mask."""
  k = jax.random.split(jax.random.key(0), 4)
  small = {"w": 0.5 * jax.random.normal(k[0], (3, 5)), "b": 0.1 * jax.random.normal(k[1], (5,)),
           "v": jax.random.normal(k[2], (4,))}
  mask = {"w": jnp.zeros((4, 8)).at[:3, :5].set(1.0), "b": jnp.zeros((8,)).at[:5].set(1.0), "v": jnp.ones((4,)),
          "z_unused": jnp.zeros((6, 6))}
  garbage = jax.random.split(k[3], 3)
  big = {"w": (7.0 * jax.random.normal(garbage[0], (4, 8))).at[:3, :5].set(small["w"]),
         "b": (5.0 * jax.random.normal(garbage[1], (8,))).at[:5].set(small["b"]), "v": small["v"],
         "z_unused": 3.0 * jax.random.normal(garbage[2], (6, 6))}
  return small, big, mask


def _run(tx, params, loss_fn, mask):
  """``NUM_STEPS`` steps, jitted (one compile instead of hundreds of eager dispatches)."""

  def steps(params, mask):
    state = tx.init(params)
    extra = {} if mask is None else {"mask": mask}

    def body(_, carry):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, state = tx.update(grads, state, params, loss=loss, **extra)
      return optax.apply_updates(params, updates), state

    return jax.lax.fori_loop(0, NUM_STEPS, body, (params, state))[0]

  return jax.jit(steps)(params, mask)


# lstm_hyper's ~30 VeLO features take minutes to compile on a loaded CPU: it runs with the slow tests.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "lstm_hyper" else n
                                  for n in registry.names("architecture")])
def test_architecture_padded_equals_unpadded(name):
  arch = registry.lookup("architecture", name)()
  theta = arch.init(jax.random.key(1))
  # A perturbed theta, so that the learned parts (not only the Adam-like start) shape the steps.
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(jax.random.key(2), max(len(leaves), 1))
  theta = treedef.unflatten([x + 0.05 * jax.random.normal(k, jnp.shape(x)) if jnp.issubdtype(x.dtype, jnp.floating)
                             else x for k, x in zip(keys, leaves)])
  small, big, mask = _padded_problem()
  tx = arch.optimizer(theta, num_steps=20)
  want = _run(tx, small, _unpadded_loss, None)
  got = _run(tx, big, lambda p: _unpadded_loss(_slice(p)), mask)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), want, small)
  assert max(jax.tree.leaves(moved)) > 1e-4, "the optimizer did not move the parameters; the test would be void"
  for key in ("w", "b", "v"):
    np.testing.assert_allclose(_slice(got)[key], want[key], rtol=2e-4, atol=2e-6, err_msg=f"{name}: {key}")
  for key in big:
    inactive = np.asarray(mask[key]) == 0
    np.testing.assert_array_equal(np.asarray(got[key])[inactive], np.asarray(big[key])[inactive],
                                  err_msg=f"{name}: inactive entries of {key} moved")


def test_masked_stats_padded_mean_ignores_inactive_entries():
  x = jnp.asarray([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
  mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
  assert float(masked_stats.mean(x, mask)) == pytest.approx(2.5)
  np.testing.assert_allclose(masked_stats.mean(x, mask, axis=-1), [1.5, 3.5])
  assert float(masked_stats.mean(x, jnp.zeros_like(x))) == 0.0  # an all-inactive tensor: 0, not NaN
  assert [float(s) for s in masked_stats.active_shape(x.shape, mask)] == [2.0, 2.0]
  with pytest.raises(ValueError, match="shaped like the parameters"):
    masked_stats.leaves({"a": 1}, jax.tree.structure({"a": 1, "b": 2}))


def _grads_equal(padded_grads, mask, reference_grads, slices):
  for (name, key), block in slices.items():
    np.testing.assert_allclose(padded_grads[name][key][block], reference_grads[name][key], rtol=1e-4, atol=1e-6,
                               err_msg=f"{name}/{key}")
  inactive = jax.tree.map(lambda g, m: float(jnp.max(jnp.abs(jnp.where(m > 0, 0.0, g)))), padded_grads, mask)
  assert max(jax.tree.leaves(inactive)) == 0.0


def test_mlp_structures_padded_loss_and_grads_equal_unpadded():
  family = polymorphic.mlp_structures(datasets=("digits", "wine"), max_depth=3)
  # wine: 13 inputs, 3 classes; two hidden layers of 12 and 8; tanh; batch 16.
  cfg = dict(family.sample(jax.random.key(0)), dataset=jnp.int32(1), depth=jnp.int32(2),
             widths=jnp.asarray([12, 8, 32], jnp.int32), batch_size=jnp.int32(16), activation=jnp.int32(1),
             num_inputs=jnp.int32(13), num_classes=jnp.int32(3))
  task = family.task(cfg)
  params = jax.tree.map(lambda p: p + 0.3, jax.jit(task.init)(jax.random.key(1)))  # garbage outside
  x, y = jax.jit(task.batch, static_argnums=1)(jax.random.key(2), "train")
  assert np.all(np.asarray(x)[:, 13:] == 0) and int(jnp.max(y)) < 3

  def reference(p):
    h = jnp.tanh(x[:16, :13] @ p["layer_0"]["w"] + p["layer_0"]["b"])
    h = jnp.tanh(h @ p["layer_1"]["w"] + p["layer_1"]["b"])
    logits = h @ p["layer_3"]["w"] + p["layer_3"]["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[:16]))

  slices = {("layer_0", "w"): np.s_[:13, :12], ("layer_0", "b"): np.s_[:12], ("layer_1", "w"): np.s_[:12, :8],
            ("layer_1", "b"): np.s_[:8], ("layer_3", "w"): np.s_[:8, :3], ("layer_3", "b"): np.s_[:3]}
  small = {name: {} for name, _ in slices}
  for (name, key), block in slices.items():
    small[name][key] = params[name][key][block]
  loss, grads = jax.jit(jax.value_and_grad(task.loss))(params, None, (x, y))
  want_loss, want_grads = jax.jit(jax.value_and_grad(reference))(small)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
  assert float(task.normalize(loss)) == pytest.approx(float(want_loss) / np.log(3), rel=1e-5)
  _grads_equal(grads, task.mask, want_grads, slices)


def test_autoencoder_structures_padded_loss_and_grads_equal_unpadded():
  family = polymorphic.autoencoder_structures(max_depth=3)
  cfg = dict(family.sample(jax.random.key(0)), depth=jnp.int32(2), widths=jnp.asarray([16, 8, 4], jnp.int32),
             num_inputs=jnp.int32(32), batch_size=jnp.int32(8), activation=jnp.int32(0))
  task = family.task(cfg)
  params = jax.tree.map(lambda p: p + 0.2, jax.jit(task.init)(jax.random.key(1)))
  x = jax.jit(task.batch, static_argnums=1)(jax.random.key(2), "train")
  # Chain: encoder layer_0 (32->16), layer_1 (16->8), layer_2 off; decoder layer_3 (8->16), layer_4 off; out layer_5.
  slices = {("layer_0", "w"): np.s_[:32, :16], ("layer_0", "b"): np.s_[:16], ("layer_1", "w"): np.s_[:16, :8],
            ("layer_1", "b"): np.s_[:8], ("layer_3", "w"): np.s_[:8, :16], ("layer_3", "b"): np.s_[:16],
            ("layer_5", "w"): np.s_[:16, :32], ("layer_5", "b"): np.s_[:32]}

  def reference(p):
    h = x[:8, :32]
    for name in ("layer_0", "layer_1", "layer_3"):
      h = jax.nn.relu(h @ p[name]["w"] + p[name]["b"])
    out = jax.nn.sigmoid(h @ p["layer_5"]["w"] + p["layer_5"]["b"])
    return jnp.mean(jnp.square(out - x[:8, :32]))

  small = {name: {} for name, _ in slices}
  for (name, key), block in slices.items():
    small[name][key] = params[name][key][block]
  loss, grads = jax.jit(jax.value_and_grad(task.loss))(params, None, x)
  want_loss, want_grads = jax.jit(jax.value_and_grad(reference))(small)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
  _grads_equal(grads, task.mask, want_grads, slices)


def test_quadratic_structures_padded_loss_and_grads_equal_unpadded():
  family = polymorphic.quadratic_structures(max_dim=16)
  cfg = dict(family.sample(jax.random.key(0)), dim=jnp.int32(5))
  task = family.task(cfg)
  params = {"x": jnp.linspace(-2.0, 2.0, 16)}
  noise = task.batch(jax.random.key(1), "train")

  def reference(p):
    return 0.5 * jnp.mean(cfg["scales"][:5] * (p["x"] - cfg["center"][:5] - noise[:5])**2)

  loss, grads = jax.value_and_grad(task.loss)(params, None, noise)
  want_loss, want_grads = jax.value_and_grad(reference)({"x": params["x"][:5]})
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
  _grads_equal({"q": grads}, {"q": task.mask}, {"q": want_grads}, {("q", "x"): np.s_[:5]})


def test_structures_sampler_one_program_for_many_structures():
  sampler = polymorphic.structures()
  total = int(sampler.name.split("n=")[1].split(",")[0])
  assert total >= 10_000 and total == sum(f.num_structures for f in sampler.families)
  family = sampler.families[0]
  cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 64))
  structures = {tuple(tuple(np.asarray(v[i]).ravel().tolist()) for k, v in sorted(cfgs.items())
                      if k != "init_scale") for i in range(64)}
  assert len(structures) > 50  # a fresh structure per task
  traces = []

  @jax.jit
  def loss(cfg, key):
    traces.append(1)
    task = family.task(cfg)
    return task.loss(task.init(key), key, task.batch(key, "train"))

  for i in range(5):
    assert np.isfinite(float(loss(jax.tree.map(lambda v, i=i: v[i], cfgs), jax.random.key(i))))
  assert len(traces) == 1


def test_structures_sampler_rejects_bad_families():
  with pytest.raises(ValueError, match="task famil"):
    polymorphic.structures(task_families=["mlp"])
  with pytest.raises(ValueError, match="widths"):
    polymorphic.mlp_structures(widths=())
  with pytest.raises(ValueError, match="input_sizes"):
    polymorphic.autoencoder_structures(input_sizes=(100,))
