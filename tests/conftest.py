"""Shared test fixtures."""

import gin
import pytest


@pytest.fixture
def clean_gin():
  """Gives a test an empty gin config and leaves none behind."""
  gin.clear_config()
  yield
  gin.clear_config()
