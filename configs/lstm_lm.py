"""Character-level LSTM language model on `tiny_text` (offline; scikit-learn's dataset
descriptions). For lm1b (internet, TFDS): --config.data.name=lm1b.

`arg` sets the norm: `--config=configs/lstm_lm.py:layer`.
"""

from configs import common


def get_config(arg: str | None = None):
  model = common.model('lstm', arg or 'none', True, width=128, num_layers=2,
                       norm_uses_mask=True, max_length=512)
  config = common.base(model, 'tiny_text', batch_size=32, steps=1000, learning_rate=2e-3,
                       optimizer='adam', weight_decay=0.0, log_every=100, eval_every=500)
  config.data.seq_length = 64
  return config.lock()
