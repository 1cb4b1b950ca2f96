"""PyTorch reference implementations of the networks normlab benchmarks, written to match
normlab's shapes and FLOPs (not its every detail), for `python -m benchmarks.run`.

- ResNet-20 for CIFAR (He et al. 2016, option-A shortcuts: subsample + zero-pad channels),
  BatchNorm after every conv, SGD with momentum; run eager in channels_last memory format.
- LSTM classifier: `nn.LSTM` (1 layer) over the sequence, a linear head on the last step, Adam.
- The normalized LSTMs, normlab's equations written out (models/lstm.py), the same input layer
  (Linear(features, hidden), then W_x without bias) and head: Ba et al.'s LayerNorm LSTM
  (LN on W_x x_t, on W_h h_{t-1} and on the cell) and Cooijmans et al.'s recurrent BatchNorm
  LSTM (per-step batch statistics on W_x x_t, W_h h_{t-1} and the cell, scales 0.1, per-step
  running averages), eager, a Python loop over time.
- Decoder-only Transformer LM: a hand-written pre-LN block (fused QKV projection, causal
  `scaled_dot_product_attention`, GELU MLP), learned positions, final LN, linear head, AdamW.

Only the benchmarks import torch (benchmarks/requirements.txt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _BasicBlock(nn.Module):
  def __init__(self, in_ch, out_ch, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_ch)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_ch)
    self.stride, self.pad = stride, out_ch - in_ch

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    skip = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.pad:
      skip = F.pad(skip, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(y + skip)


class CifarResNet(nn.Module):
  def __init__(self, depth=20, width=16, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(width)
    blocks, ch = [], width
    for stage in range(3):
      out = width * 2 ** stage
      for i in range(n):
        blocks.append(_BasicBlock(ch, out, 2 if stage > 0 and i == 0 else 1))
        ch = out
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(ch, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn(self.stem(x))))
    return self.head(x.mean(dim=(2, 3)))


class LSTMClassifier(nn.Module):
  def __init__(self, features=1, hidden=128, num_classes=10):
    super().__init__()
    self.lstm = nn.LSTM(features, hidden, batch_first=True)
    self.head = nn.Linear(hidden, num_classes)

  def forward(self, x):
    y, _ = self.lstm(x)
    return self.head(y[:, -1])


class NormLSTMClassifier(nn.Module):
  """normlab's LSTM with norm `layer` or `batch` (recurrent BN), the same equations."""

  def __init__(self, features=1, hidden=128, num_classes=10, norm='layer', length=40,
               momentum=0.9, eps=1e-5):
    super().__init__()
    self.embed = nn.Linear(features, hidden)
    self.w_x = nn.Linear(hidden, 4 * hidden, bias=False)
    self.w_h = nn.Linear(hidden, 4 * hidden, bias=False)
    self.bias = nn.Parameter(torch.zeros(4 * hidden))
    self.norm, self.hidden, self.momentum, self.eps = norm, hidden, momentum, eps
    if norm == 'layer':
      self.ln_x, self.ln_h, self.ln_c = (nn.LayerNorm(n, eps=eps)
                                         for n in (4 * hidden, 4 * hidden, hidden))
    else:
      self.x_scale = nn.Parameter(torch.ones(4 * hidden))
      self.x_bias = nn.Parameter(torch.zeros(4 * hidden))
      self.h_scale = nn.Parameter(torch.full((4 * hidden,), 0.1))
      self.c_scale = nn.Parameter(torch.full((hidden,), 0.1))
      self.c_bias = nn.Parameter(torch.zeros(hidden))
      for name, n in (('x', 4 * hidden), ('h', 4 * hidden), ('c', hidden)):
        self.register_buffer(f'{name}_mean', torch.zeros(length, n))
        self.register_buffer(f'{name}_var', torch.ones(length, n))
    self.head = nn.Linear(hidden, num_classes)

  def _bn(self, v, name, t):
    """Batch statistics at step t (train), with the step's running averages updated."""
    mean, var = v.mean(0), v.var(0, unbiased=False)
    with torch.no_grad():
      for buf, new in ((getattr(self, f'{name}_mean'), mean), (getattr(self, f'{name}_var'), var)):
        buf[t].mul_(self.momentum).add_((1 - self.momentum) * new)
    return (v - mean) * torch.rsqrt(var + self.eps)

  def forward(self, x):
    xw = self.w_x(self.embed(x))
    if self.norm == 'layer':
      xw = self.ln_x(xw)
    else:
      xw = torch.stack([self._bn(xw[:, t], 'x', t) for t in range(xw.shape[1])], 1)
      xw = xw * self.x_scale + self.x_bias
    xw = xw + self.bias
    h = c = x.new_zeros(x.shape[0], self.hidden)
    for t in range(x.shape[1]):
      hw = self.w_h(h)
      hw = self.ln_h(hw) if self.norm == 'layer' else self._bn(hw, 'h', t) * self.h_scale
      i, f, g, o = (xw[:, t] + hw).chunk(4, 1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      cn = self.ln_c(c) if self.norm == 'layer' else self._bn(c, 'c', t) * self.c_scale + self.c_bias
      h = torch.sigmoid(o) * torch.tanh(cn)
    return self.head(h)


class _PreLNBlock(nn.Module):
  def __init__(self, d, heads, mlp):
    super().__init__()
    self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)
    self.heads = heads

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True)
    x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
    return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TransformerLM(nn.Module):
  def __init__(self, vocab, d=128, layers=2, heads=4, mlp_ratio=4, max_length=512):
    super().__init__()
    self.embed = nn.Embedding(vocab, d)
    self.pos = nn.Parameter(torch.randn(max_length, d) * 0.02)
    self.blocks = nn.Sequential(*[_PreLNBlock(d, heads, d * mlp_ratio) for _ in range(layers)])
    self.ln = nn.LayerNorm(d)
    self.head = nn.Linear(d, vocab)

  def forward(self, tokens):
    h = self.embed(tokens) + self.pos[:tokens.shape[1]]
    return self.head(self.ln(self.blocks(h)))


class TrainStep:
  """One optimizer step of `model` on a fixed batch; `step()` runs it to completion."""

  def __init__(self, model, optimizer, inputs, targets, channels_last=False, device='cpu'):
    model, inputs, targets = model.to(device), inputs.to(device), targets.to(device)
    self.model, self.optimizer = model, optimizer
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
      inputs = inputs.contiguous(memory_format=torch.channels_last)
    self.inputs, self.targets = inputs, targets
    self.model.train()

  def step(self):
    self.optimizer.zero_grad(set_to_none=True)
    logits = self.model(self.inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1))
    loss.backward()
    self.optimizer.step()
    return float(loss.detach())


def resnet_step(batch, depth=20, size=32, channels_last=True, device='cpu'):
  torch.manual_seed(0)
  model = CifarResNet(depth).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch, 3, size, size)
  return TrainStep(model, opt, x, torch.randint(0, 10, (batch,)), channels_last, device)


def lstm_step(batch, length, hidden):
  torch.manual_seed(0)
  model = LSTMClassifier(1, hidden)
  opt = torch.optim.Adam(model.parameters(), lr=3e-3)
  return TrainStep(model, opt, torch.randn(batch, length, 1), torch.randint(0, 10, (batch,)))


def norm_lstm_step(batch, length, hidden, norm):
  torch.manual_seed(0)
  model = NormLSTMClassifier(1, hidden, norm=norm, length=length)
  opt = torch.optim.Adam(model.parameters(), lr=3e-3)
  return TrainStep(model, opt, torch.randn(batch, length, 1), torch.randint(0, 10, (batch,)))


def transformer_lm_step(batch, length, vocab, d, layers, heads, mlp_ratio, device='cpu'):
  torch.manual_seed(0)
  model = TransformerLM(vocab, d, layers, heads, mlp_ratio).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  tokens = torch.randint(0, vocab, (batch, length))
  return TrainStep(model, opt, tokens, torch.randint(0, vocab, (batch, length)),
                   device=device)
