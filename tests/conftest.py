"""Shared test fixtures."""

import os

import gin
import pytest

# The suite's time is mostly XLA compiling many small programs once each. Backend optimisation level 0 compiles
# them about twice as fast on CPU (the programs run slower, which tests barely notice) and leaves results within
# the tests' tolerances. It must be set before jax starts its backend, and reaches the entry points tests start as
# processes; a caller's own --xla_backend_optimization_level wins.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """One persistent compilation cache per test session (per xdist worker), for this process and the entry points it
  starts.

  Many tests build the same programs (the same tiny task, architecture and estimator) from fresh closures, and
  many start ``experiments/*.py`` as processes; sharing one cache compiles each program once per worker (one cache
  shared by both workers measured slower: 333 and 358 s against 285-324 s for the suite). It lives
  in pytest's temporary directory, never the user's ``~/.cache/lopt/jax`` (``LOPT_COMPILATION_CACHE`` set by the
  caller wins, ``off`` included). Tests of the cache itself (tests/test_compilation_cache.py) use their own.
  """
  from lopt import compilation_cache  # pylint: disable=import-outside-toplevel

  if compilation_cache.ENV_VAR not in os.environ:
    os.environ[compilation_cache.ENV_VAR] = str(tmp_path_factory.mktemp("jax_compilation_cache"))
  compilation_cache.enable()
  yield


@pytest.fixture
def clean_gin():
  """Gives a test an empty gin config and leaves none behind."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def failing_writes(monkeypatch):
  """``fail(suffix, errno, message)``: checkpoint writes of files ending in ``suffix`` raise that OSError.

  Other writes go through; ``fail(None)`` restores normal writing.
  """
  from lopt import checkpoints

  real_write = checkpoints.atomic_write

  def fail(suffix, errno=28, message="No space left on device"):
    if suffix is None:
      monkeypatch.setattr(checkpoints, "atomic_write", real_write)
      return

    def write(path, data):
      if path.endswith(suffix):
        raise OSError(errno, message)
      real_write(path, data)

    monkeypatch.setattr(checkpoints, "atomic_write", write)

  return fail
