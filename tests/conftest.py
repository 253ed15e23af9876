"""Shared test fixtures."""

import os

import gin
import pytest

# The entry points the tests start as processes would fill the user's ~/.cache/lopt/jax; tests of the cache
# (tests/test_compilation_cache.py) pass their own directory.
os.environ.setdefault("LOPT_COMPILATION_CACHE", "off")


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
