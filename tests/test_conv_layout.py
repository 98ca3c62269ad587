"""Channels-last 2-D convolutions compute what the 1-D convolutions they replace compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from services.runtime.conv_layout import ChannelsLastConv1d, to_channels_last


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(8, 16, 7, padding=3),
        nn.Conv1d(16, 16, 5, dilation=3, padding=6, bias=False),
        nn.Conv1d(16, 8, 3, stride=2, groups=4),
        nn.ConvTranspose1d(16, 8, 16, stride=8, padding=4),
        nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1, output_padding=1),
    ],
    ids=["plain", "dilated", "strided-grouped", "upsampling", "output-padding"],
)
def test_same_output_as_the_1d_convolution(conv: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, 37)
    with torch.inference_mode():
        expected = conv(x)
        actual = ChannelsLastConv1d(conv)(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_whole_model_converted_in_place_and_chained() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.Sequential(nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1), nn.Tanh()),
    ).eval()
    x = torch.randn(2, 4, 20)
    with torch.inference_mode():
        expected = model(x)
        converted = to_channels_last(model)
        actual = converted(x)
    assert converted is model
    assert not any(isinstance(m, nn.Conv1d | nn.ConvTranspose1d) for m in model.modules())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
