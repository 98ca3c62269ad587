"""`voxline voices import` on a tiny random multi-speaker VITS exported the way Piper does.

The model is assembled from `services.vits` modules under Piper's module names (``enc_p``,
``dp``, ``flow``, ``dec``, ``emb_g``) and exported with torch's TorchScript-based ONNX
exporter (``dynamo=False``, opset 15, inputs ``input``/``input_lengths``/``scales``/``sid``,
output ``output`` ``[1, 1, samples]``). The imported parts must reproduce onnxruntime's audio
for every speaker; bad inputs must be refused in one line with exit code 2.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from services.cli.client import list_voices, synthesize
from services.cli.main import main as cli_main
from services.cli.stack import LocalStack
from services.vits.config import VitsConfig
from services.vits.decoder import Generator
from services.vits.duration import ElementwiseAffine, StochasticDurationPredictor
from services.vits.flow import ResidualCouplingFlow
from services.vits.modules import sequence_mask
from services.vits.parts import expand_by_durations
from services.vits.text_encoder import TextEncoder
from services.vits.voice_folder import VoiceFolderError, load_part
from services.voices.piper_import import ImportRefused, import_piper_voice

PHONEMES = ["_", "^", "$", " ", "a", "b", "d", "e", "i", "k", "l", "m", "n", "o", "s", "t"]
SPEAKERS = {"alice": 0, "bob": 1, "carol": 2}
TINY = VitsConfig(
    n_vocab=len(PHONEMES),
    inter_channels=16,
    hidden_channels=24,
    filter_channels=48,
    n_heads=2,
    n_layers=2,
    dp_filter_channels=24,
    flow_n_flows=2,
    flow_hidden_channels=24,
    flow_n_layers=2,
    resblock="1",  # joe uses "2": the tiny voice covers the other design
    resblock_kernel_sizes=(3, 5),
    resblock_dilation_sizes=((1, 3), (1, 3)),
    upsample_rates=(4, 4),
    upsample_kernel_sizes=(8, 8),
    upsample_initial_channel=32,
    n_speakers=len(SPEAKERS),
    gin_channels=8,
    sample_rate=16000,  # any rate: nothing may assume 22050
)


class PiperLikeVits(nn.Module):
    """VITS inference as Piper exports it: one graph, noise drawn inside, scaled by `scales`."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.enc_p = TextEncoder(config)
        self.dp = StochasticDurationPredictor(config)
        self.flow = ResidualCouplingFlow(config)
        self.dec = Generator(config)
        self.emb_g = nn.Embedding(config.n_speakers, config.gin_channels)

    def forward(self, input: Tensor, input_lengths: Tensor, scales: Tensor, sid: Tensor) -> Tensor:
        noise_scale, length_scale, noise_w = scales[0], scales[1], scales[2]
        g = self.emb_g(sid).unsqueeze(-1)
        x, m_p, logs_p, x_mask = self.enc_p(input, input_lengths)
        logw = self.dp(x, x_mask, torch.randn_like(x[:, :2]) * noise_w, g)
        durations = torch.ceil(torch.exp(logw) * x_mask * length_scale).squeeze(1).long()
        frame_lengths = durations.sum(dim=1).clamp(min=1)
        frames = frame_lengths.max()  # a tensor: the exported length stays symbolic
        y_mask = sequence_mask(frame_lengths, frames)
        m = expand_by_durations(m_p, durations, frames)
        logs = expand_by_durations(logs_p, durations, frames)
        z_p = m + torch.randn_like(m) * torch.exp(logs) * noise_scale
        z = self.flow(z_p * y_mask, y_mask, g) * y_mask
        return self.dec(z, g)


def _tiny_model() -> PiperLikeVits:
    torch.manual_seed(0)
    model = PiperLikeVits(TINY).eval()
    affine = model.dp.flows[0]
    assert isinstance(affine, ElementwiseAffine)
    with torch.no_grad():
        # No two parameters equal (LayerNorm's ones and zeros would be): the exporter
        # deduplicates equal initializers, keeping one name for all of them.
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        # Random weights give log-durations near 0 (1 frame per id); shift them to ~4 frames,
        # and give logs a value so the exporter's folded exp(-logs) is exercised.
        affine.m.copy_(torch.tensor([[-1.4], [0.0]]))
        affine.logs.copy_(torch.tensor([[0.1], [-0.2]]))
    return model


DYNAMIC_AXES = {
    "input": {0: "batch", 1: "phonemes"},
    "input_lengths": {0: "batch"},
    "output": {0: "batch", 2: "time"},
}


def _export(model: nn.Module, path: Path) -> None:
    ids = torch.tensor([[1, 0, 4, 0, 5, 0, 2]])
    args = (ids, torch.tensor([7]), torch.tensor([0.667, 1.0, 0.8]), torch.tensor([1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's "converting a tensor to a Python..."
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=["input", "input_lengths", "scales", "sid"],
            output_names=["output"],
            dynamic_axes=DYNAMIC_AXES,
            opset_version=15,
            dynamo=False,
            # Folding would rewrite emb_rel_k into a pre-transposed copy; Piper's attention
            # slices it by the input length, so Piper's files keep it by name. (The folds
            # Piper's files do have, weight norm and exp(-logs), the joe parity test covers.)
            do_constant_folding=False,
        )


def _piper_json(**overrides: object) -> dict:
    return {
        "audio": {"sample_rate": TINY.sample_rate, "quality": "x_low"},
        "espeak": {"voice": "en-gb"},
        "inference": {"noise_scale": 0.5, "length_scale": 1.1, "noise_w": 0.7},
        "phoneme_type": "espeak",
        "phoneme_id_map": {p: [i] for i, p in enumerate(PHONEMES)},
        "num_symbols": len(PHONEMES),
        "num_speakers": len(SPEAKERS),
        "speaker_id_map": SPEAKERS,
        "language": {"code": "en_GB"},
        **overrides,
    }


@pytest.fixture(scope="module")
def tiny_voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny voice as Piper would ship it: ``tiny.onnx`` + ``tiny.onnx.json`` + a card."""
    folder = tmp_path_factory.mktemp("piper")
    _export(_tiny_model(), folder / "tiny.onnx")
    (folder / "tiny.onnx.json").write_text(json.dumps(_piper_json()))
    (folder / "MODEL_CARD").write_text("Tiny random test voice. Licence: none.\n")
    return folder / "tiny.onnx"


@pytest.fixture(scope="module")
def imported(tiny_voice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("voices")
    argv = ["voices", "import", str(tiny_voice), "--out", str(out), "--name", "tiny-voice"]
    assert cli_main(argv) == 0
    return out / "tiny-voice"


def _onnx_audio(path: Path, ids: list[int], sid: int) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
        "sid": np.array([sid], dtype=np.int64),
    }
    return session.run(None, feeds)[0].reshape(-1)


@torch.inference_mode()
def _torch_audio(folder: Path, ids: list[int], sid: int) -> np.ndarray:
    frontend, _ = load_part(folder, "frontend")
    acoustic, _ = load_part(folder, "acoustic")
    decoder, _ = load_part(folder, "vocoder")
    x, speaker, zero, one = (torch.tensor([v]) for v in (ids, sid, 0.0, 1.0))
    m_p, logs_p, durations = frontend(x, torch.tensor([len(ids)]), torch.randn(1, 2, len(ids)),
                                      zero, one, speaker)  # fmt: skip
    noise = torch.randn(1, m_p.shape[1], int(durations.sum().clamp(min=1)))
    z, _ = acoustic(m_p, logs_p, durations, noise, zero, speaker)
    return decoder(z, speaker)[0].numpy()


def test_the_import_writes_a_complete_voice_folder(imported: Path, tiny_voice: Path) -> None:
    config = json.loads((imported / "config.json").read_text())
    assert config["format_version"] == 2 and config["architecture"] == "vits"
    assert config["voice"] == "tiny-voice" and config["language_code"] == "en-GB"
    assert config["sample_rate_hz"] == 16000 and config["hop_length"] == 16
    assert config["latent_channels"] == 16 and config["dtype"] == "float32"
    assert config["phonemes"]["espeak_voice"] == "en-gb"
    assert config["phonemes"]["id_map"]["a"] == [4]
    assert config["inference"] == {"noise_scale": 0.5, "length_scale": 1.1, "noise_w": 0.7}
    assert config["speakers"] == SPEAKERS
    assert VitsConfig.from_json(config["model"]) == TINY
    assert config["source"]["onnx"] == "tiny.onnx"
    assert config["model_card"] == "MODEL_CARD" and (imported / "MODEL_CARD").is_file()
    for stage in ("frontend", "acoustic", "vocoder"):
        assert (imported / config[stage]["file"]).is_file()


def test_imported_parts_match_onnxruntime_for_every_speaker(
    imported: Path, tiny_voice: Path
) -> None:
    ids = [1, 0, 4, 0, 5, 0, 6, 3, 7, 0, 8, 0, 9, 10, 0, 11, 0, 12, 13, 0, 14, 15, 0, 2]
    outputs = []
    for sid in SPEAKERS.values():
        expected = _onnx_audio(tiny_voice, ids, sid)
        actual = _torch_audio(imported, ids, sid)
        assert actual.shape == expected.shape and len(actual) > 20 * TINY.hop_length
        assert np.abs(actual - expected).max() < 1e-4
        outputs.append(actual)
    for i in range(len(outputs)):
        for j in range(i):
            same_length = outputs[i].shape == outputs[j].shape
            assert not same_length or np.abs(outputs[i] - outputs[j]).max() > 1e-3


def test_a_corrupted_weights_file_is_refused_at_load(imported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(imported, copy)
    data = bytearray((copy / "vocoder.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "vocoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(VoiceFolderError, match="sha256"):
        load_part(copy, "vocoder")


def _refusal(capsys: pytest.CaptureFixture[str], model: Path, out: Path, *extra: str) -> str:
    """Run the CLI, expect exit code 2 and a one-line ``error: ...``; return the line."""
    assert cli_main(["voices", "import", str(model), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_non_vits_graph_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "linear.onnx"
    torch.onnx.export(nn.Linear(4, 2), (torch.zeros(1, 4),), str(model), dynamo=False)
    (tmp_path / "linear.onnx.json").write_text(json.dumps(_piper_json()))
    err = _refusal(capsys, model, tmp_path / "out")
    assert "not a VITS voice" in err and "enc_p, dp, flow, dec" in err


def test_a_file_that_is_not_onnx_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    (tmp_path / "voice.onnx.json").write_text(json.dumps(_piper_json()))
    assert "is not an ONNX model" in _refusal(capsys, model, tmp_path / "out")


@pytest.mark.parametrize("phoneme_type", ["text", "pinyin"])
def test_an_unknown_phoneme_type_is_refused(
    tiny_voice: Path, tmp_path: Path, phoneme_type: str
) -> None:
    config = tmp_path / "voice.json"
    config.write_text(json.dumps(_piper_json(phoneme_type=phoneme_type)))
    with pytest.raises(ImportRefused, match=f"phoneme_type '{phoneme_type}' is not supported"):
        import_piper_voice(tiny_voice, config, tmp_path / "out")


def test_a_missing_or_unreadable_config_is_refused(
    tiny_voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(capsys, tiny_voice, tmp_path, "--config", str(tmp_path / "absent.json"))
    assert "absent.json not found" in err
    (tmp_path / "broken.json").write_text("{not json")
    err = _refusal(capsys, tiny_voice, tmp_path, "--config", str(tmp_path / "broken.json"))
    assert "broken.json is unreadable" in err


def test_a_graph_missing_a_weight_is_refused(
    tiny_voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(str(tiny_voice))
    (victim,) = [t for t in model.graph.initializer if t.name == "dec.conv_post.weight"]
    model.graph.initializer.remove(victim)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    (tmp_path / "broken.onnx.json").write_text(tiny_voice.with_suffix(".onnx.json").read_text())
    err = _refusal(capsys, broken, tmp_path / "out")
    assert "missing weights: dec.conv_post.weight" in err


def test_an_imported_multi_speaker_voice_serves_its_speakers(
    imported: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The imported voice through the real stack: its speakers listed and selected by name,
    its own sample rate (16 kHz) served natively and resampled on request."""
    env = {"VOXLINE_MODEL_DIR": str(imported.parent), "VOXLINE_VOICES": imported.name}
    with LocalStack(tmp_path_factory.mktemp("stack"), env=env) as stack:
        reply = list_voices(stack.gateway)
        (voice,) = reply.voices
        assert reply.default_voice == voice.name == imported.name
        assert list(voice.speakers) == list(SPEAKERS) and voice.native_sample_rate_hz == 16000

        def pcm(speaker: str, seed: int = 1, sample_rate: int = 0) -> tuple[bytes, int]:
            result = synthesize(
                stack.gateway, "A bad sea, a lost kite.", speaker=speaker, seed=seed,
                sample_rate=sample_rate, timeout=60,
            )  # fmt: skip
            return result.pcm, result.sample_rate

        bob, rate = pcm("bob")
        assert rate == 16000 and len(bob) > 0
        assert pcm("bob") == (bob, rate)  # same speaker, same seed: the same audio
        assert pcm("carol")[0] != bob
        assert pcm("")[0] == pcm("alice")[0]  # no speaker: the first
        resampled, rate = pcm("bob", sample_rate=22050)
        assert rate == 22050 and abs(len(resampled) / len(bob) - 22050 / 16000) < 0.01
        with pytest.raises(grpc.RpcError) as err:
            pcm("dave")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "speakers: alice, bob, carol" in (err.value.details() or "")
