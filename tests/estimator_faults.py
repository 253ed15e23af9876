"""Deliberate estimator bugs, injected into a pytest run: ``pytest -p estimator_faults`` with
``LOPT_ESTIMATOR_FAULT=<name>`` (see ``FAULTS``). ``tests/test_estimator_mutations.py`` runs the fast estimator
tests once per fault and asserts that every one makes a test fail.

Two kinds of fault:

- output faults wrap a registered factory so that its estimates come out wrong (e.g. every component negated
  except the last one); the module attribute and the registry entry are both replaced;
- source faults replace one exact snippet of a module's source (it must occur exactly once) and rebind the module's
  functions and classes to the mutated copy, so callers that go through the module see the bug.

``CATCHERS`` names the fast tests that must catch a fault (the estimator tests by default, ``ESTIMATOR_TESTS``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import types

import jax
import jax.numpy as jnp

from lopt import registry

ENV = "LOPT_ESTIMATOR_FAULT"


def _but_last(fn):
  """Applies ``fn`` to every component of the flattened gradient except the last one."""

  def apply(grad):
    flat, unravel = jax.flatten_util.ravel_pytree(grad)
    return unravel(jnp.concatenate([fn(flat[:-1]), flat[-1:]]))

  return apply


# name -> (estimator, condition on the factory's keyword arguments, change of the gradient)
OUTPUT_FAULTS = {
    "pes_negated_but_last": ("pes", lambda kw: True, _but_last(jnp.negative)),
    "pes_zeroed_but_last": ("pes", lambda kw: True, _but_last(jnp.zeros_like)),
    "es_full_negated_but_last": ("es", lambda kw: kw.get("full_horizon", False), _but_last(jnp.negative)),
    "es_full_zeroed_but_last": ("es", lambda kw: kw.get("full_horizon", False), _but_last(jnp.zeros_like)),
    "es_truncated_negated": ("es", lambda kw: not kw.get("full_horizon", False),
                             lambda g: jax.tree.map(jnp.negative, g)),
    "tbptt_negated": ("tbptt", lambda kw: True, lambda g: jax.tree.map(jnp.negative, g)),
    "tbptt_doubled": ("tbptt", lambda kw: True, lambda g: jax.tree.map(lambda x: 2 * x, g)),
}

# name -> (module, snippet, replacement)
SOURCE_FAULTS = {
    # The - copies of PES (and ES) pairs see other data than the + copies.
    "antithetic_different_data": (
        "lopt.meta_trainers.antithetic",
        "jax.vmap(jax.vmap(run), in_axes=(0, 0, None))(thetas, inner, task_keys)",
        "jax.vmap(jax.vmap(run))(thetas, inner, jnp.stack([task_keys, "
        "jax.random.split(jax.random.fold_in(key, 7), num_slots)]))"),
    # Sign: both copies perturbed by +eps.
    "antithetic_sign": ("lopt.meta_trainers.antithetic", "jnp.stack([t[None] + e, t[None] - e])",
                        "jnp.stack([t[None] + e, t[None] + e])"),
    # Scale: the antithetic difference divided by std^2 instead of 2 std^2.
    "antithetic_scale": ("lopt.meta_trainers.antithetic", "diff / (2.0 * perturbation.std**2)",
                         "diff / (perturbation.std**2)"),
    # Reset: PES's accumulator is not zeroed when an episode restarts.
    "pes_no_reset": ("lopt.meta_trainers.pes", "jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), 0.0, a)",
                     "a"),
    # Accumulator: PES multiplies the loss difference by this truncation's eps only (truncated ES).
    "pes_no_accumulator": ("lopt.meta_trainers.pes", "inner, eps, accumulator,", "inner, eps, eps,"),
    # Combined ignores its weights.
    "combined_unweighted": ("lopt.meta_trainers.combined", "sum(w * g for w, g in zip(weights, gs))",
                            "sum(gs) / len(gs)"),
}

# Issue 22: masking, the outer-validation loss, the stability guard and the architectures that read the loss.
MASKING_TESTS = ["tests/test_estimator_masking.py"]
VALID_LOSS_TESTS = ["tests/test_valid_loss.py"]
STABILITY_TESTS = ["tests/test_stability.py"]
RUN_SAFETY_TESTS = ["tests/test_run_safety.py"]
ARCHITECTURE_TESTS = ["tests/test_loss_inputs.py"]
SOURCE_FAULTS.update({
    # Masking: the antithetic mean divides by every slot instead of the valid ones.
    "antithetic_mean_over_all_slots": (
        "lopt.meta_trainers.antithetic", "/ (2.0 * perturbation.std**2) / jnp.maximum(jnp.sum(valid), 1)",
        "/ (2.0 * perturbation.std**2) / num_slots"),
    # Masking: a pair counts when its + copy is valid (whatever its - copy did), or when either copy is.
    "antithetic_pair_plus_copy_only": (
        "lopt.meta_trainers.antithetic",
        "jnp.all(objectives.valid(raw, inner.params, settings.max_loss, lead=2), axis=0)",
        "objectives.valid(raw, inner.params, settings.max_loss, lead=2)[0]"),
    "antithetic_pair_either_copy": (
        "lopt.meta_trainers.antithetic",
        "jnp.all(objectives.valid(raw, inner.params, settings.max_loss, lead=2), axis=0)",
        "jnp.any(objectives.valid(raw, inner.params, settings.max_loss, lead=2), axis=0)"),
    # Masking: TBPTT's mean divides by every task.
    "tbptt_mean_over_all_slots": ("lopt.meta_trainers.tbptt", "num_valid = jnp.maximum(jnp.sum(valid), 1)",
                                  "num_valid = n"),
    # Masking: the logged meta-loss averages over every slot.
    "masked_mean_over_all": ("lopt.meta_trainers.objectives", "/ jnp.maximum(jnp.sum(mask), 1)", "/ mask.size"),
})
SOURCE_FAULTS.update({
    # The outer-validation loss fed to the optimizer is read from the training split.
    "valid_loss_from_train_split": ("lopt.meta_trainers.unroll",
                                    'task.batch(jax.random.fold_in(key, 1), "outer_valid")',
                                    'task.batch(jax.random.fold_in(key, 1), "train")'),
    # ... or computed once per truncation instead of every valid_every steps.
    "valid_loss_stale": ("lopt.meta_trainers.unroll", "jax.lax.cond(index % valid_every == 0,",
                         "jax.lax.cond(index == 0,"),
    # The outer-validation meta-loss of an unroll is read from the training split.
    "meta_loss_from_train_split": ("lopt.meta_trainers.unroll", "task.batch(valid_key, meta_loss_split)",
                                   'task.batch(valid_key, "train")'),
    # PES/ES ignore the configured valid_every or meta_loss_split.
    "antithetic_valid_every_ignored": ("lopt.meta_trainers.antithetic", "valid_every=settings.valid_every)",
                                       "valid_every=1)"),
    "antithetic_train_split": ("lopt.meta_trainers.antithetic", "meta_loss_split=settings.meta_loss_split,",
                               'meta_loss_split="train",'),
    # TBPTT ignores them.
    "tbptt_valid_every_ignored": ("lopt.meta_trainers.tbptt", "valid_every=settings.valid_every,", "valid_every=1,"),
    "tbptt_train_split": ("lopt.meta_trainers.tbptt", "meta_loss_split=settings.meta_loss_split, remat",
                          'meta_loss_split="train", remat'),
    # The evaluation loop feeds the training loss as the validation loss.
    "evaluation_valid_loss_is_train_loss": (
        "lopt.evaluation.training",
        "valid_loss = unroll.latest_valid_loss(task, params, jax.random.fold_in(k, 2), index, valid_every, valid_loss)",
        "valid_loss = loss"),
    # The periodic meta-evaluation feeds it at another cadence than evaluation's VALID_EVERY.
    "meta_eval_valid_every_ignored": ("lopt.evaluation.hooks", "valid_every=valid_every_for(architecture),",
                                      "valid_every=1,"),
})
SOURCE_FAULTS.update({
    # The guard drops extra arguments (loss=) on their way to the outer optimizer.
    "guard_drops_extra_args": ("lopt.meta_trainers.stability",
                               "meta_optimizer.update(updates, state.inner, params, **extra)",
                               "meta_optimizer.update(updates, state.inner, params)"),
    # The guard's learning-rate scale is not applied, or not lowered at a rollback.
    "guard_lr_scale_unused": ("lopt.meta_trainers.stability", "u * state.lr_scale.astype(u.dtype)", "u"),
    "guard_lr_not_lowered": ("lopt.meta_trainers.stability", "scale = float(opt_state.lr_scale) * s.lr_factor",
                             "scale = float(opt_state.lr_scale)"),
    # It ships the last theta instead of the best.
    "guard_ships_last_theta": ("lopt.meta_trainers.stability",
                               "return opt_state.best_theta if int(opt_state.best_step) >= 0 else theta",
                               "return theta"),
    # A rollback keeps theta, or keeps the outer optimizer's moments.
    "guard_theta_not_rolled_back": ("lopt.meta_trainers.stability",
                                    "theta = _like(_to_host(opt_state.best_theta), theta)", "theta = theta"),
    "guard_moments_not_rolled_back": ("lopt.meta_trainers.stability",
                                      "opt_state = opt_state._replace(inner=_like(_to_host(opt_state.best_inner), "
                                      "opt_state.inner))", "opt_state = opt_state"),
    # max_rollbacks is ignored; a climbing meta-eval score is ignored; a fully masked window is ignored.
    "guard_max_rollbacks_ignored": ("lopt.meta_trainers.stability",
                                    "if best_step < 0 or rollbacks >= s.max_rollbacks:", "if best_step < 0:"),
    "guard_eval_climb_ignored": ("lopt.meta_trainers.stability",
                                 "if not np.isfinite(score) or score > s.eval_factor * best:",
                                 "if not np.isfinite(score):"),
    "guard_masked_window_ignored": ("lopt.meta_trainers.stability", 'if metrics.get("fully_masked_steps", 0) > 0:',
                                    "if False:"),
})
SOURCE_FAULTS.update({
    # Readable errors and logs: a guard added on resume is not checked (a tree dump instead of one line); a finished
    # run reports no metrics; meta-evaluation prints no progress line.
    "resume_guard_unchecked": ("lopt.meta_trainers.outer_loop",
                               "trust_unverified=trust_unverified_checkpoints, check=check)",
                               "trust_unverified=trust_unverified_checkpoints)"),
    "finished_run_metrics_empty": ("lopt.meta_trainers.outer_loop",
                                   "last_metrics = run_safety.logged_metrics(run.workdir, done)", "pass"),
    "meta_eval_no_progress_line": ("lopt.meta_trainers.outer_loop",
                                   'logging.info("Meta-evaluation at step %d of %d ...", done, num_outer_steps)',
                                   "pass"),
})
SOURCE_FAULTS.update({
    # Architectures that read the loss ignore it (per_tensor: the loss, the valid loss; lstm_hyper: the loss).
    "per_tensor_ignores_loss": ("lopt.architectures.per_tensor",
                                "train_loss = features.update_loss_state(state.train_loss, loss)",
                                "train_loss = state.train_loss"),
    "per_tensor_ignores_valid_loss": ("lopt.architectures.per_tensor",
                                      "valid_state = features.update_loss_state(state.valid_loss, valid_loss)",
                                      "valid_state = state.valid_loss"),
    "lstm_hyper_ignores_loss": ("lopt.architectures.lstm_hyper",
                                "loss_buffer = velo_features.update_loss_buffer(state.loss, loss, loss_decays)",
                                "loss_buffer = state.loss"),
})
CATCHERS = {
    "antithetic_mean_over_all_slots": MASKING_TESTS,
    "antithetic_pair_plus_copy_only": MASKING_TESTS,
    "antithetic_pair_either_copy": MASKING_TESTS,
    "tbptt_mean_over_all_slots": MASKING_TESTS,
    "masked_mean_over_all": MASKING_TESTS,
    **{fault: VALID_LOSS_TESTS for fault in (
        "valid_loss_from_train_split", "valid_loss_stale", "meta_loss_from_train_split",
        "antithetic_valid_every_ignored", "antithetic_train_split", "tbptt_valid_every_ignored", "tbptt_train_split",
        "evaluation_valid_loss_is_train_loss", "meta_eval_valid_every_ignored")},
    **{fault: STABILITY_TESTS for fault in SOURCE_FAULTS if fault.startswith("guard_")},
    "resume_guard_unchecked": RUN_SAFETY_TESTS,
    "finished_run_metrics_empty": RUN_SAFETY_TESTS,
    "meta_eval_no_progress_line": STABILITY_TESTS,
    "per_tensor_ignores_loss": ARCHITECTURE_TESTS,
    "per_tensor_ignores_valid_loss": ARCHITECTURE_TESTS,
    "lstm_hyper_ignores_loss": ARCHITECTURE_TESTS,
}

FAULTS = sorted(OUTPUT_FAULTS) + sorted(SOURCE_FAULTS)
# The fast estimator tests, the conformance cases first (they catch most faults).
ESTIMATOR_TESTS = ["tests/test_estimator_conformance.py", "tests/test_pes.py", "tests/test_estimators.py"]


def catchers(fault: str) -> list[str]:
  """The test files run with ``fault`` injected; one of their tests must fail."""
  return CATCHERS.get(fault, ESTIMATOR_TESTS)


def mutated_source(fault: str) -> tuple[str, str]:
  """``(module name, mutated source)`` of a source fault; raises unless its snippet occurs exactly once."""
  module_name, snippet, replacement = SOURCE_FAULTS[fault]
  source = inspect.getsource(importlib.import_module(module_name))
  if source.count(snippet) != 1:
    raise RuntimeError(f"fault {fault}: the snippet occurs {source.count(snippet)} times in {module_name}, not once")
  return module_name, source.replace(snippet, replacement)


def _replace_factory(name: str, module: types.ModuleType, factory) -> None:
  setattr(module, name, factory)
  registry._REGISTRY["estimator"][name] = factory  # pylint: disable=protected-access


def _apply_output_fault(fault: str) -> None:
  name, applies, change = OUTPUT_FAULTS[fault]
  module = importlib.import_module(f"lopt.meta_trainers.{name}")
  original = getattr(module, name)

  def factory(**kw):
    estimator = original(**kw)
    if not applies(kw):
      return estimator
    inner = estimator.estimate

    def estimate(*args, **kwargs):
      grad, state, metrics = inner(*args, **kwargs)
      return change(grad), state, metrics

    return estimator._replace(estimate=estimate)

  _replace_factory(name, module, factory)


def _apply_source_fault(fault: str) -> None:
  module_name, source = mutated_source(fault)
  module = importlib.import_module(module_name)
  namespace = {"__name__": module_name, "__file__": module.__file__}  # dataclasses look the module up
  # The copy registers nothing: registration names must stay unique; the factories are swapped in below.
  registry_register = registry.register
  registry.register = lambda kind, name: (lambda f: f)
  try:
    exec(compile(source, module.__file__, "exec"), namespace)  # pylint: disable=exec-used
  finally:
    registry.register = registry_register
  for attr, value in namespace.items():
    # Classes too (e.g. the stability guard's), so their methods carry the fault.
    if ((inspect.isfunction(value) or inspect.isclass(value))
        and getattr(getattr(module, attr, None), "__module__", None) == module_name):
      original = getattr(module, attr)
      setattr(module, attr, value)
      # A registered factory (estimator, architecture, ...) is swapped in the registry too, so lookups see it.
      for entries in registry._REGISTRY.values():  # pylint: disable=protected-access
        for name, factory in list(entries.items()):
          if factory is original:
            entries[name] = value


def pytest_configure(config):
  """Applies the fault named by ``LOPT_ESTIMATOR_FAULT`` before any test module is imported."""
  del config
  fault = os.environ.get(ENV)
  if not fault:
    return
  if fault in OUTPUT_FAULTS:
    _apply_output_fault(fault)
  elif fault in SOURCE_FAULTS:
    _apply_source_fault(fault)
  else:
    raise RuntimeError(f"Unknown {ENV}={fault!r}; faults: {', '.join(FAULTS)}")
  print(f"estimator fault applied: {fault}")
