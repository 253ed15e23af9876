"""The plugin registry: registration, duplicates, lookup with suggestions, listing, gin integration."""

import gin
import pytest

from lopt import config, registry  # noqa: F401  config registers every plugin.


@pytest.fixture
def throwaway():
  names = []

  def make(name):
    @registry.register("architecture", name)
    def factory(*, width: int = 3):
      """A throw-away plugin for tests."""
      return ("made", width)
    names.append(name)
    return factory

  yield make
  for name in names:
    registry.unregister("architecture", name)


def test_register_returns_factory_unchanged_and_lookup_finds_it(throwaway):
  factory = throwaway("zz_test_plugin")
  assert registry.lookup("architecture", "zz_test_plugin") is factory
  assert factory(width=5) == ("made", 5)
  assert "zz_test_plugin" in registry.names("architecture")
  assert registry.describe("architecture", "zz_test_plugin") == "A throw-away plugin for tests."


def test_duplicate_name_is_refused(throwaway):
  throwaway("zz_dup")
  with pytest.raises(ValueError, match="already registered"):
    throwaway("zz_dup")


def test_unknown_name_lists_names_and_suggests_closest():
  with pytest.raises(registry.UnknownPluginError) as info:
    registry.lookup("architecture", "fff")
  message = str(info.value)
  assert "Did you mean 'ff'?" in message
  for name in registry.names("architecture"):
    assert name in message


def test_unknown_kind_suggests_closest():
  with pytest.raises(registry.UnknownPluginError, match="Did you mean 'estimator'"):
    registry.names("estimators_")


def test_builtin_plugins_registered():
  assert {"ff", "adam", "learnable_adam"} <= set(registry.names("architecture"))
  assert {"quadratic", "image_mlp"} <= set(registry.names("task_family"))
  assert "fixed" in registry.names("task_sampler")
  assert "pes" in registry.names("estimator")


def test_registered_factory_usable_from_gin(throwaway, clean_gin):
  throwaway("zz_gin_plugin")

  @gin.configurable
  def consumer(thing=None):
    return thing

  gin.parse_config(["consumer.thing = @architectures.zz_gin_plugin()", "architectures.zz_gin_plugin.width = 7"])
  assert consumer() == ("made", 7)
