"""Character-level decoder-only Transformer LM on `tiny_text` (offline). For lm1b (internet,
TFDS): --config.data.name=lm1b.

`arg` sets the norm position: `--config=configs/transformer_lm.py:post`.
"""

from configs import common


def get_config(arg: str | None = None):
  model = common.model('transformer', 'layer', True, width=128, num_layers=2, num_heads=4,
                       mlp_ratio=4, norm_position=arg or 'pre', norm_uses_mask=True,
                       max_length=512,
                       activation='gelu_tanh')   # MLP: gelu_tanh (flax, GPT-2) | gelu (exact, PyTorch) | relu
  config = common.base(model, 'tiny_text', batch_size=32, steps=1000, learning_rate=1e-3,
                       optimizer='adamw', weight_decay=1e-4, log_every=100, eval_every=500)
  config.optimizer.warmup_steps = 200
  config.data.seq_length = 64
  return config.lock()
