"""A Vision Transformer on the embedded 8x8 digits: 2x2 patches (16 tokens), pre-LN, 4 blocks.

  python train.py --config=configs/vit_digits.py --workdir=runs/vit_bn \
      --config.model.norm=batch --config.model.norm_position=post
  python train.py --config=configs/vit_digits.py --workdir=runs/vit_c10 \
      --config.data.name=cifar10 --config.model.patch_size=4     # 64 tokens of 4x4x3

`arg` sets the norm: `--config=configs/vit_digits.py:scale`.
"""

from configs import common


def get_config(arg: str | None = None):
  model = common.model('vit', arg or 'layer', True, width=64, num_layers=4, num_heads=4,
                       mlp_ratio=2, patch_size=2)
  config = common.base(model, 'digits', batch_size=128, steps=1000, learning_rate=1e-3,
                       optimizer='adamw', weight_decay=1e-4, log_every=50, eval_every=250)
  config.optimizer.warmup_steps = 100
  return config.lock()
