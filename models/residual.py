"""Residual branches: where a learnable gain replaces normalization's job at initialization.

SkipInit (De & Smith 2020, ResNets) and ReZero (Bachlechner et al. 2020, Transformers) multiply
each residual branch by a learnable scalar initialized to 0, so that at initialization every
block is its skip path and the network computes the identity through its blocks (plus the stem
and the head): signal and gradients keep their scale at any depth, with or without a norm.
`model.skipinit` turns it on in every family with residual branches.
"""

from __future__ import annotations

import flax.linen as nn


def gated(module: nn.Module, branch, enabled: bool, name: str = 'skip_gain'):
  """`branch` times a learnable scalar (init 0) declared in `module` when `enabled`."""
  if not enabled:
    return branch
  return branch * module.param(name, nn.initializers.zeros, ()).astype(branch.dtype)
