"""Opening a TFDS dataset for random access, with errors that say what to do.

Offline, a dataset that was never prepared cannot be read: that is one line pointing to README's
"Real datasets (TFDS)" section, in seconds, with nothing created. Downloading happens only with
`data.download=True`.
"""

from __future__ import annotations

import logging
import os

from errors import ConfigError


def data_dir(data_config) -> str:
  return data_config.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def open_splits(name: str, splits: list[str], data_config):
  """tfds.data_source(name, split=splits), or a ConfigError saying why not and what to do."""
  import tensorflow_datasets as tfds  # slow import: only when a TFDS dataset is used
  absl_logger = logging.getLogger('absl')   # TFDS warns about each folder it probes
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return tfds.data_source(name, split=splits, data_dir=data_config.data_dir,
                            download=data_config.download)
  except Exception as e:  # noqa: BLE001 - TFDS raises KeyError, NotImplementedError, network errors
    reason = ' '.join(str(e).split())[:200] or type(e).__name__
    if not data_config.download:
      raise ConfigError(
          f'TFDS dataset {name} is not prepared in {data_dir(data_config)} and data.download is '
          f'False: prepare it once on a machine with internet (README, "Real datasets (TFDS)"), '
          f'or pass --config.data.download=True ({type(e).__name__}: {reason})') from None
    raise ConfigError(f'TFDS dataset {name} could not be downloaded and prepared into '
                      f'{data_dir(data_config)}: {type(e).__name__}: {reason}') from None
  finally:
    absl_logger.setLevel(level)
