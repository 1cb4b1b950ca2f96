import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from configs import default  # noqa: E402


def tiny_config(**overrides):
  """ResNet-8, width 8, on digits, a few dozen steps: seconds on 2 cores."""
  config = default.get_config('8')
  config.model.width = 8
  config.data.batch_size = 32
  config.num_train_steps = 20
  config.log_every_steps = 10
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  if _accelerator():   # the float32 references hold on GPUs and TPUs too (no TF32 passes)
    config.matmul_precision = 'highest'
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return config


@pytest.fixture
def tiny():
  return tiny_config


# The files whose tests start processes and train runs end to end, longest first: xdist hands
# tests out in this order, so the two workers end on short tests instead of one of them running
# a two-minute test alone at the end (.ci/run's budget).
LONG_FIRST = ('test_multiprocess.py', 'test_faults.py', 'test_sweeps.py', 'test_cli.py',
              'test_parallel.py', 'test_claim_sweeps.py', 'test_seeds.py')


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))   # stable: file order


def _accelerator() -> bool:
  import jax
  return jax.default_backend() != 'cpu'


@pytest.fixture(autouse=True)
def _full_float32_matmuls_on_accelerators():
  """Tests compare against float32 references: on a GPU or TPU every matmul and conv a test
  compiles asks for full float32 (JAX's default there is TF32 / bfloat16 passes). The CPU
  computes float32 in full either way: nothing is set there."""
  if _accelerator():
    import jax
    jax.config.update('jax_default_matmul_precision', 'highest')
  yield
