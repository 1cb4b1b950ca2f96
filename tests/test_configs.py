"""Configs are locked: a mistyped key fails instead of being silently added."""

import ml_collections
import pytest

from configs import default


def test_config_is_locked():
  config = default.get_config()
  with pytest.raises(AttributeError):
    config.model.nrom = 'layer'
  assert isinstance(config, ml_collections.ConfigDict)
