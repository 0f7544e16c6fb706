"""Sequence classifiers of padded token ids ``[N, L]`` (pad id ``0``): a GRU and a small Transformer encoder.

Both are written with plain tensor operations (no ``nn.GRU``, no fused attention kernel), so ``MetaLearner``
runs them vectorised over tasks (``vmap``) with exact second-order meta-gradients. Padding never changes a
prediction: appending pad tokens to a text leaves its logits as they are.

**GRU** (Cho et al. 2014), for the embedded token ``x_t`` and the mask ``m_t`` (1 for a token, 0 for padding)::

    r_t = sigmoid(W_r x_t + U_r h_{t-1} + b_r)          z_t = sigmoid(W_z x_t + U_z h_{t-1} + b_z)
    n_t = tanh(W_n x_t + r_t * (U_n h_{t-1} + c_n) + b_n)
    h_t = m_t * ((1 - z_t) * n_t + z_t * h_{t-1}) + (1 - m_t) * h_{t-1}

so the last state ``h_L`` is the state after the last real token; ``logits = head(h_L)``.

**Transformer encoder** (pre-norm, Vaswani et al. 2017): ``h = E x + P`` with the sinusoidal positions
``P[t, 2i] = sin(t / 10000^(2i/d))``, ``P[t, 2i+1] = cos(...)``, then per layer::

    h = h + W_o MultiHeadAttention(LN(h))     attention_ij = softmax_j(q_i . k_j / sqrt(d_head) + mask_j)
    h = h + W_2 relu(W_1 LN(h))

where ``mask_j`` is ``-1e9`` for a pad key (a pad never attends into a text); ``logits = head(LN(mean_t h_t))``
with the mean over the real tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torchmaml.data.text import PAD, VOCABULARY

MASKED = -1e9  # added to the attention score of a pad key: exp underflows to exactly 0


class CharGRU(nn.Module):
    """Embedding, a GRU over the tokens, a linear head on the state after the last real token."""

    def __init__(self, classes: int, embedding: int = 32, hidden: int = 64, vocabulary: int = VOCABULARY) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding)
        self.input = nn.Linear(embedding, 3 * hidden)  # W_r, W_z, W_n and b_r, b_z, b_n
        self.recurrent = nn.Linear(hidden, 3 * hidden)  # U_r, U_z, U_n and their biases (c_n for n)
        self.head = nn.Linear(hidden, classes)
        self.hidden = hidden

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD).unsqueeze(-1).to(self.head.weight.dtype)  # [N, L, 1]
        inputs = self.input(self.embedding(ids))  # [N, L, 3H], all steps at once
        state = inputs.new_zeros(ids.shape[0], self.hidden)
        for t in range(ids.shape[1]):
            x_r, x_z, x_n = inputs[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = self.recurrent(state).chunk(3, dim=-1)
            reset, update = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            new = torch.tanh(x_n + reset * h_n)
            state = state + mask[:, t] * (1 - update) * (new - state)
        return self.head(state)


class TextTransformer(nn.Module):
    """Embedding plus sinusoidal positions, ``layers`` pre-norm encoder layers, a head on the mean token."""

    def __init__(
        self,
        classes: int,
        embedding: int = 32,
        hidden: int = 64,
        heads: int = 2,
        layers: int = 1,
        max_length: int = 64,
        vocabulary: int = VOCABULARY,
    ) -> None:
        super().__init__()
        if embedding % heads:
            raise ValueError(f"text_heads: {heads} heads must divide text_embedding = {embedding}")
        self.heads = heads
        self.embedding = nn.Embedding(vocabulary, embedding)
        self.register_buffer("positions", sinusoidal_positions(max_length, embedding), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(embedding, hidden, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(embedding)
        self.head = nn.Linear(embedding, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != PAD  # [N, L]
        h = self.embedding(ids) + self.positions[: ids.shape[1]]
        bias = torch.zeros(real.shape, dtype=h.dtype, device=h.device).masked_fill(~real, MASKED)[:, None, None]
        for layer in self.layers:
            h = layer(h, bias)
        weights = real.to(h.dtype).unsqueeze(-1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(self.norm(pooled))


class EncoderLayer(nn.Module):
    """One pre-norm layer: multi-head self-attention and a ReLU feed-forward block, each residual."""

    def __init__(self, width: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ff1, self.ff2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``h [N, L, d]``, ``bias [N, 1, 1, L]`` (0 for a token, ``MASKED`` for a pad key)."""
        n, length, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(n, length, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [N, heads, L, d_head]
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + bias
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
        h = h + self.out(attended)
        return h + self.ff2(torch.relu(self.ff1(self.norm2(h))))


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """``[length, width]``: ``sin(t / 10000^(2i/width))`` in even columns, ``cos`` in odd ones."""
    t = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    rates = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(t * rates)
    table[:, 1::2] = torch.cos(t * rates)[:, : width // 2]
    return table.to(torch.get_default_dtype())
