"""JAX's persistent compilation cache: where ``lopt.compilation_cache`` puts it, and a second start compiles nothing."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from lopt import compilation_cache
from meta_train_cli import SCRIPT, TINY_RUN_BINDINGS

_OPTIONS = ("jax_compilation_cache_dir", "jax_enable_compilation_cache", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_cache_config(monkeypatch):
  """Lets a test change JAX's cache options in this process; restores them (and JAX's cache state) afterwards."""
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  saved = {name: getattr(jax.config, name) for name in _OPTIONS}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  jax_cache.reset_cache()


def _entries(directory):
  return sorted(n for n in os.listdir(directory) if not n.startswith(".")) if os.path.isdir(directory) else []


def test_the_flag_beats_the_environment_which_beats_jax_which_beats_the_default(jax_cache_config, monkeypatch,
                                                                                 tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  jax.config.update("jax_compilation_cache_dir", None)
  assert compilation_cache.resolve() == str(tmp_path / "xdg" / "lopt" / "jax")
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))  # what JAX_COMPILATION_CACHE_DIR sets
  assert compilation_cache.resolve() == str(tmp_path / "jax")
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
  assert compilation_cache.resolve() == str(tmp_path / "env")
  assert compilation_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")
  assert compilation_cache.resolve("Off") is None
  monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
  assert compilation_cache.resolve() is None
  assert compilation_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")


def test_an_empty_setting_or_an_uncreatable_directory_is_refused(jax_cache_config, monkeypatch, tmp_path):
  with pytest.raises(ValueError, match="--compilation_cache is empty"):
    compilation_cache.resolve(" ")
  monkeypatch.setenv(compilation_cache.ENV_VAR, "")
  with pytest.raises(ValueError, match=f"{compilation_cache.ENV_VAR} is empty"):
    compilation_cache.resolve()
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(ValueError, match=f"cannot create the compilation cache directory {tmp_path / 'file'}/cache"):
    compilation_cache.enable(str(tmp_path / "file" / "cache"))


def test_enable_caches_even_fast_compiles_and_off_stops_writing(jax_cache_config, tmp_path):
  directory = str(tmp_path / "cache")
  assert compilation_cache.enable(directory) == directory
  jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(5.0)).block_until_ready()  # compiles in milliseconds
  written = _entries(directory)
  assert written, "a fast compile was not cached: the thresholds were not lowered"
  assert compilation_cache.enable("off") is None
  jax.jit(lambda x: x * 5.0 - 2.0)(jnp.arange(7.0)).block_until_ready()
  assert _entries(directory) == written


# A fresh process that runs one step of the ff optimizer and prints JAX's cache events (hits, misses).
_ONE_STEP = """
import sys
import jax
from lopt import compilation_cache
from lopt.architectures import ff
from lopt.tasks.quadratic import quadratic

events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
compilation_cache.enable(sys.argv[1])
arch = ff.ff(hidden_sizes=(4,))
family = quadratic(dim=3)
task = family.task(family.sample(jax.random.key(0)))
params = task.init(jax.random.key(1))
tx = arch.optimizer(arch.init(jax.random.key(2)), num_steps=10)
step = jax.jit(lambda p, s, k: tx.update(jax.grad(task.loss)(p, k, task.batch(k, "train")), s, p))
jax.block_until_ready(step(params, tx.init(params), jax.random.key(3)))
print(sum(e.endswith("/cache_hits") for e in events), sum(e.endswith("/cache_misses") for e in events))
"""


def _one_step(cache):
  proc = subprocess.run([sys.executable, "-c", _ONE_STEP, cache], capture_output=True, text=True, timeout=300,
                        check=False, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  hits, misses = map(int, proc.stdout.split()[-2:])
  return hits, misses


def test_a_fresh_process_loads_every_program_of_the_same_step_from_the_cache(tmp_path):
  cache = str(tmp_path / "cache")
  hits, misses = _one_step(cache)
  assert misses > 0 and hits == 0
  written = _entries(cache)
  assert len(written) == misses
  hits, misses = _one_step(cache)
  assert (hits, misses) == (len(written), 0)
  assert _entries(cache) == written


def _meta_train(workdir, cache):
  bindings = TINY_RUN_BINDINGS + ["meta_train.estimator = @estimators.pes()", "estimators.pes.num_tasks = 2",
                                  "estimators.pes.truncation_length = 5", "estimators.pes.horizon = 20",
                                  "meta_train.num_outer_steps = 2"]
  proc = subprocess.run([sys.executable, SCRIPT, f"--workdir={workdir}", "--wandb_mode=disabled",
                         f"--compilation_cache={cache}", *[f"--gin_bindings={b}" for b in bindings]],
                        capture_output=True, text=True, timeout=300, check=False,
                        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # two real meta_train processes: ~20 s on a quiet machine, a minute or more on a loaded one
def test_a_second_start_of_the_same_config_compiles_nothing(tmp_path):
  cache = str(tmp_path / "cache")
  _meta_train(tmp_path / "first", cache)
  first = _entries(cache)
  assert first, "the first run cached nothing"
  _meta_train(tmp_path / "second", cache)  # a new workdir: nothing is restored, every program is needed again
  assert _entries(cache) == first, "the second run compiled programs the first one had cached"
