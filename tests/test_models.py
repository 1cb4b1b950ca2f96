"""The model registry (models/__init__.py): names checked with the valid choices listed, and the
speed fields resolved per backend."""

import pytest

import models
from configs import default, lstm_mnist1d
from data.base import Dataset
from errors import ConfigError


def test_unknown_model_lists_valid_models():
  with pytest.raises(ConfigError, match='resnet_imagenet'):
    cfg = default.get_config().model
    with cfg.unlocked():
      cfg.name = 'vgg'
    models.build_model(cfg, Dataset(None, None, 10, (32, 32, 3)))


def test_compute_dtype_is_checked():
  cfg = default.get_config()
  with cfg.unlocked():
    cfg.model.compute_dtype = 'float16'
  with pytest.raises(ConfigError, match='valid: float32, bfloat16'):
    models.check_model_config(cfg.model)
  from configs import lstm_mnist1d
  cfg = lstm_mnist1d.get_config()
  with cfg.unlocked():
    cfg.model.compute_dtype = 'bfloat16'
  with pytest.raises(ConfigError, match='not implemented by lstm'):
    models.check_model_config(cfg.model)


def test_speed_fields_are_checked_and_auto_turns_on_only_where_measured():
  cfg = default.get_config()
  for key, bad, valid in (('conv_wgrad', 'fast', 'auto, xla, chunked'),
                          ('fusion_barriers', 'sometimes', 'auto, on, off')):
    with cfg.unlocked():
      cfg.model[key] = bad
    with pytest.raises(ConfigError, match=f'valid: {valid}'):
      models.check_model_config(cfg.model)
    cfg.model[key] = 'auto'
  # measured to help: chunks on one CPU device, barriers on CPU; elsewhere off until measured
  assert models.resolve_speed(cfg.model, 'cpu', 1) == {'conv_wgrad': 'chunked',
                                                       'fusion_barriers': 'on'}
  assert models.resolve_speed(cfg.model, 'cpu', 8)['conv_wgrad'] == 'xla'
  assert models.resolve_speed(cfg.model, 'gpu', 1) == {'conv_wgrad': 'xla',
                                                       'fusion_barriers': 'off'}
  assert models.resolve_speed(cfg.model, 'tpu', 1)['fusion_barriers'] == 'off'
  with cfg.unlocked():
    cfg.model.name = 'resnet_imagenet'
  assert models.resolve_speed(cfg.model, 'cpu', 1)['conv_wgrad'] == 'xla'
  cfg.model.name = 'resnet'
  ds = Dataset(None, None, 10, (8, 8, 3))
  for wgrad, barriers in (('xla', 'on'), ('chunked', 'off')):   # a chosen value is kept
    cfg.model.conv_wgrad, cfg.model.fusion_barriers = wgrad, barriers
    assert models.resolve_speed(cfg.model, 'gpu', 4) == {'conv_wgrad': wgrad,
                                                         'fusion_barriers': barriers}
    module = models.build_model(cfg.model, ds)
    assert (module.wgrad_chunk_bytes > 0) == (wgrad == 'chunked')
    assert module.fusion_barriers == (barriers == 'on')
  # the LSTM's: the custom-VJP loop and the folded input projection on CPU, measured there
  lstm = lstm_mnist1d.get_config()
  assert models.resolve_speed(lstm.model, 'cpu', 1) == {'recurrence': 'custom_vjp',
                                                        'fold_input': 'on'}
  assert models.resolve_speed(lstm.model, 'gpu', 1) == {'recurrence': 'scan', 'fold_input': 'off'}
  seq = Dataset(None, None, 10, (40, 1), kind='sequence')
  for recurrence, fold in (('scan', 'on'), ('custom_vjp', 'off')):
    lstm.model.recurrence, lstm.model.fold_input = recurrence, fold
    assert models.resolve_speed(lstm.model, 'tpu', 1) == {'recurrence': recurrence,
                                                          'fold_input': fold}
    module = models.build_model(lstm.model, seq)
    assert (module.fused, module.fold_input) == (recurrence == 'custom_vjp', fold == 'on')
  for key, valid in (('recurrence', 'auto, scan, custom_vjp'), ('fold_input', 'auto, on, off')):
    bad = lstm.model.copy_and_resolve_references()
    bad[key] = 'fast'
    with pytest.raises(ConfigError, match=f'valid: {valid}'):
      models.check_model_config(bad)
