"""Text -> audio with a VITS voice, in one screen: read this first.

    phoneme ids --VitsFrontendModel--> prior per id + durations
                --VitsAcousticModel--> latent z per 256-sample frame
                --VitsDecoderModel---> waveform

The serving stages run the same three parts, with batching and streaming around them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from services.vits.parts import VitsAcousticModel, VitsDecoderModel, VitsFrontendModel

__all__ = ["synthesize"]


@torch.inference_mode()
def synthesize(
    frontend: VitsFrontendModel,
    acoustic: VitsAcousticModel,
    decoder: VitsDecoderModel,
    ids: list[int],
    *,
    noise_scale: float = 0.667,
    length_scale: float = 1.0,
    noise_w: float = 0.8,
    speaker: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Piper phoneme ids (``[BOS, PAD, p1, PAD, ..., EOS]``) -> (audio ``[S]`` float in
    [-1, 1], durations ``[T]`` frames per id). Zero scales give deterministic output."""
    device = next(frontend.parameters()).device
    x = torch.tensor([ids], device=device)
    lengths = torch.tensor([len(ids)], device=device)
    sid = None if speaker is None else torch.tensor([speaker], device=device)

    def scale(value: float) -> Tensor:
        return torch.tensor([value], device=device)

    # Each request draws its own noise (seeded by the caller): the parts never draw any.
    dp_noise = torch.randn(1, 2, len(ids), generator=generator).to(device)
    m_p, logs_p, durations = frontend(
        x, lengths, dp_noise, scale(noise_w), scale(length_scale), sid
    )

    frames = int(durations.sum().clamp(min=1))
    prior_noise = torch.randn(1, m_p.shape[1], frames, generator=generator).to(device)
    z, _ = acoustic(m_p, logs_p, durations, prior_noise, scale(noise_scale), sid)

    audio = decoder(z, sid)
    return audio[0], durations[0]
