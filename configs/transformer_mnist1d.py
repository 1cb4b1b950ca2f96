"""Transformer encoder classifier on mnist1d (40 tokens of 1 feature, 10 classes).

  python train.py --config=configs/transformer_mnist1d.py --workdir=runs/tf_post \
      --config.model.norm_position=post

`arg` sets the norm position: `--config=configs/transformer_mnist1d.py:post`.
"""

from configs import common


def get_config(arg: str | None = None):
  model = common.model('transformer', 'layer', True, width=64, num_layers=4, num_heads=4,
                       mlp_ratio=2, norm_position=arg or 'pre', norm_uses_mask=True,
                       max_length=512,
                       activation='gelu_tanh')   # MLP: gelu_tanh (flax, GPT-2) | gelu (exact, PyTorch) | relu
  config = common.base(model, 'mnist1d', batch_size=64, steps=3000, learning_rate=1e-3,
                       optimizer='adamw', weight_decay=1e-4, log_every=100, eval_every=500)
  config.optimizer.warmup_steps = 200
  config.data.min_length = 20
  return config.lock()
