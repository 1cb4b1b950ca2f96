"""PyTorch reference implementations of the networks normlab benchmarks, written to match
normlab's shapes and FLOPs (not its every detail), for `python -m benchmarks.run`.

- ResNet-20 for CIFAR (He et al. 2016, option-A shortcuts: subsample + zero-pad channels),
  BatchNorm after every conv, SGD with momentum; run eager in channels_last memory format.
- LSTM classifier: `nn.LSTM` (1 layer) over the sequence, a linear head on the last step, Adam.
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

  def __init__(self, model, optimizer, inputs, targets, channels_last=False):
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
    return float(loss)


def resnet_step(batch, depth=20, size=32, channels_last=True):
  torch.manual_seed(0)
  model = CifarResNet(depth)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch, 3, size, size)
  return TrainStep(model, opt, x, torch.randint(0, 10, (batch,)), channels_last)


def lstm_step(batch, length, hidden):
  torch.manual_seed(0)
  model = LSTMClassifier(1, hidden)
  opt = torch.optim.Adam(model.parameters(), lr=3e-3)
  return TrainStep(model, opt, torch.randn(batch, length, 1), torch.randint(0, 10, (batch,)))


def transformer_lm_step(batch, length, vocab, d, layers, heads, mlp_ratio):
  torch.manual_seed(0)
  model = TransformerLM(vocab, d, layers, heads, mlp_ratio)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  tokens = torch.randint(0, vocab, (batch, length))
  return TrainStep(model, opt, tokens, torch.randint(0, vocab, (batch, length)))
