"""LSTM classifier on mnist1d (40 steps, 1 feature, 10 classes), generated offline.

  python train.py --config=configs/lstm_mnist1d.py --workdir=runs/lstm_ln --config.model.norm=layer
  ... --config.data.variable_length=True --config.data.min_length=20   # padded, masked batches

`arg` sets the norm: `--config=configs/lstm_mnist1d.py:layer`.
"""

from configs import common


def get_config(arg: str | None = None):
  model = common.model('lstm', arg or 'none', False, width=128, num_layers=1,
                       norm_uses_mask=True,   # False: padding enters the norm statistics
                       max_length=512)
  config = common.base(model, 'mnist1d', batch_size=64, steps=3000, learning_rate=3e-3,
                       optimizer='adam', weight_decay=0.0, log_every=100, eval_every=500)
  config.data.min_length = 20
  return config.lock()
