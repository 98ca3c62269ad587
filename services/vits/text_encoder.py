"""The text encoder (VITS's ``enc_p``): phoneme ids -> prior mean and log-scale per id.

A transformer encoder whose self-attention adds learned *relative* position terms (Shaw et
al., 2018) within a window of +-`window_size` ids, instead of absolute positions, so it
generalises to any sentence length; each layer is post-norm attention + conv feed-forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.vits.config import VitsConfig
from services.vits.modules import LayerNorm, sequence_mask

__all__ = ["FeedForward", "RelativeAttention", "TextEncoder", "TransformerEncoder"]


def _band_index(length: int, window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For query i and key j: the relative-embedding index ``j - i + window`` clamped to the
    table ``[L, L]``, and whether ``|j - i| <= window`` (outside, the relative term is 0)."""
    steps = torch.arange(length, device=device)
    offset = steps[None, :] - steps[:, None]
    return (offset + window).clamp(0, 2 * window), offset.abs() <= window


class RelativeAttention(nn.Module):
    """Multi-head self-attention with relative position embeddings for keys and values,
    shared by all heads (``emb_rel_k``/``emb_rel_v``: ``[1, 2*window+1, C/heads]``)."""

    def __init__(self, channels: int, n_heads: int, window_size: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        n_rel = 2 * window_size + 1
        scale = self.head_channels**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, n_rel, self.head_channels) * scale)
        self.emb_rel_v = nn.Parameter(torch.randn(1, n_rel, self.head_channels) * scale)

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, C, T] -> [B, heads, T, C/heads]``."""
        b, _, t = x.shape
        return x.view(b, self.n_heads, self.head_channels, t).transpose(2, 3)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """``x [B, C, T]``, ``attn_mask [B, 1, T, T]`` (1 = query and key both valid) ->
        ``[B, C, T]``."""
        b, c, t = x.shape
        query = self._heads(self.conv_q(x)) / math.sqrt(self.head_channels)
        key, value = self._heads(self.conv_k(x)), self._heads(self.conv_v(x))
        index, in_window = _band_index(t, self.window_size, x.device)

        # Content term plus the relative-key term: q_i . e_k[j - i], computed once per
        # relative offset ([B, H, T, 2w+1]) and spread onto the (i, j) grid.
        rel_logits = query @ self.emb_rel_k.transpose(1, 2).unsqueeze(0)
        rel_scores = rel_logits.gather(-1, index.expand(b, self.n_heads, t, t))
        scores = query @ key.transpose(2, 3) + rel_scores * in_window
        # -1e4, not -inf: a fully padded query row must still softmax to finite numbers.
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        weights = torch.softmax(scores, dim=-1)

        # Relative-value term: for each offset, the weight on key i + offset (0 past the ends).
        padded = F.pad(weights, (self.window_size, self.window_size))
        offsets = torch.arange(2 * self.window_size + 1, device=x.device)
        band = (torch.arange(t, device=x.device)[:, None] + offsets[None, :]).expand(
            b, self.n_heads, t, offsets.numel()
        )
        rel_weights = padded.gather(-1, band)
        output = weights @ value + rel_weights @ self.emb_rel_v.unsqueeze(0)
        return self.conv_o(output.transpose(2, 3).reshape(b, c, t))


class FeedForward(nn.Module):
    """Two "same"-padded convs with a ReLU between, masked so padding never leaks in."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """``x [B, C, T]``, ``x_mask [B, 1, T]`` -> ``[B, C, T]``."""
        x = torch.relu(self.conv_1(F.pad(x * x_mask, self.padding)))
        return self.conv_2(F.pad(x * x_mask, self.padding)) * x_mask


class TransformerEncoder(nn.Module):
    """`n_layers` of post-norm (relative attention, feed-forward), VITS's ``attentions.Encoder``."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        hidden, n = config.hidden_channels, config.n_layers
        self.attn_layers = nn.ModuleList(
            RelativeAttention(hidden, config.n_heads, config.window_size) for _ in range(n)
        )
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden) for _ in range(n))
        self.ffn_layers = nn.ModuleList(
            FeedForward(hidden, config.filter_channels, config.kernel_size) for _ in range(n)
        )
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden) for _ in range(n))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """``x [B, C, T]``, ``x_mask [B, 1, T]`` -> ``[B, C, T]`` (0 on padding)."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm_1(x + attn(x, attn_mask))
            x = norm_2(x + ffn(x, x_mask))
        return x * x_mask


class TextEncoder(nn.Module):
    """Phoneme ids -> hidden states and the prior's mean and log-scale per id."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.hidden_channels = config.hidden_channels
        self.inter_channels = config.inter_channels
        self.emb = nn.Embedding(config.n_vocab, config.hidden_channels)
        self.encoder = TransformerEncoder(config)
        self.proj = nn.Conv1d(config.hidden_channels, 2 * config.inter_channels, 1)

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``ids [B, T]``, ``lengths [B]`` -> hidden ``[B, H, T]``, ``m_p [B, C, T]``,
        ``logs_p [B, C, T]``, ``x_mask [B, 1, T]`` (all 0 on padding)."""
        x_mask = sequence_mask(lengths, ids.shape[1])
        # The sqrt(H) scale is VITS's (embeddings are initialised with std H**-0.5).
        x = self.emb(ids).transpose(1, 2) * math.sqrt(self.hidden_channels)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m_p, logs_p = stats.split(self.inter_channels, dim=1)
        return x, m_p, logs_p, x_mask
