"""Read a Piper voice (``.onnx`` + ``.onnx.json``) into a `VitsConfig` and three state dicts.

Piper exports VITS with torch's ONNX exporter, which keeps most weights under their torch
names (``enc_p.encoder.attn_layers.0.conv_q.weight``). Three kinds are renamed and are placed
by the graph node that consumes them, whose name carries the module path:

- weight-norm was folded into plain conv weights at export (``onnx::Conv_8168`` feeding
  ``/flow/flows.6/enc/in_layers.0/Conv``): input 1 of a Conv is ``<module>.weight``, input 2
  ``<module>.bias``;
- an embedding table may be named after another input (joe's ``enc_p.emb.weight`` is called
  ``sid``): input 0 of ``/<module>/Gather``;
- the duration predictor's ``ElementwiseAffine`` log-scale is folded into ``exp(-logs)``
  (``/dp/flows.0/Exp_output_0``).

Sizes come from the weights' shapes; what shapes cannot tell (dilations, upsampling strides)
from the nodes' attributes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.vits.config import VitsConfig
from services.vits.parts import build_part

__all__ = ["PiperFormatError", "PiperVoice", "infer_config", "read_graph_weights", "read_piper"]

#: The top-level VITS modules a voice's graph must contain.
VITS_MODULES = ("enc_p", "dp", "flow", "dec")
#: Piper's phoneme types this importer supports (ids come from espeak-ng IPA).
SUPPORTED_PHONEME_TYPES = ("espeak",)
_FOLDED_DP_LOGS = "/dp/flows.0/Exp_output_0"


class PiperFormatError(ValueError):
    """The files are not a Piper VITS voice this reader understands; the message says why."""


@dataclass(frozen=True)
class PiperVoice:
    """A Piper voice read into torch terms."""

    config: VitsConfig
    piper_json: dict[str, Any]
    state_dicts: dict[str, dict[str, torch.Tensor]]  # stage -> the part's state dict


def _module_path(node_name: str) -> str | None:
    """``/flow/flows.6/enc/in_layers.0/Conv`` -> ``flow.flows.6.enc.in_layers.0``."""
    parts = node_name.strip("/").split("/")
    return ".".join(parts[:-1]) if node_name.startswith("/") and len(parts) > 1 else None


def read_graph_weights(model: Any) -> dict[str, np.ndarray]:
    """Every weight of an ONNX ``ModelProto`` under its torch name (see the module doc)."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # weights exported as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arrays.setdefault(node.output[0], numpy_helper.to_array(node.attribute[0].t))
    aliases = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def resolve(name: str) -> np.ndarray | None:
        while name in aliases and name not in arrays:
            name = aliases[name]
        return arrays.get(name)

    weights = {k: v for k, v in arrays.items() if re.fullmatch(r"[A-Za-z_][\w.]*\.\w+", k)}
    slots = {"Conv": {1: "weight", 2: "bias"}, "ConvTranspose": {1: "weight", 2: "bias"},
             "Gather": {0: "weight"}}  # fmt: skip
    for node in model.graph.node:
        module = _module_path(node.name)
        for index, param in slots.get(node.op_type, {}).items():
            if module is None or index >= len(node.input):
                continue
            value = resolve(node.input[index])
            if value is not None and value.dtype.kind == "f":
                weights.setdefault(f"{module}.{param}", value)
    if "dp.flows.0.logs" not in weights and _FOLDED_DP_LOGS in arrays:
        weights["dp.flows.0.logs"] = -np.log(arrays[_FOLDED_DP_LOGS])
    return weights


def _indices(weights: dict[str, np.ndarray], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern`'s group over the weight names."""
    found = {int(m.group(1)) for k in weights if (m := re.fullmatch(pattern, k))}
    return sorted(found)


def _shape(weights: dict[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in weights:
        raise PiperFormatError(f"missing weight {key}")
    return tuple(weights[key].shape)


def _attribute(model: Any, node_name: str, attribute: str) -> list[int]:
    from onnx import helper

    for node in model.graph.node:
        if node.name == node_name:
            for a in node.attribute:
                if a.name == attribute:
                    return list(helper.get_attribute_value(a))
    raise PiperFormatError(f"the graph has no node {node_name} with a {attribute} attribute")


def _decoder_config(model: Any, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """Decoder sizes; strides and dilations from the nodes (shapes cannot tell them)."""
    ups = _indices(weights, r"dec\.ups\.(\d+)\.weight")
    rates = [_attribute(model, f"/dec/ups.{i}/ConvTranspose", "strides")[0] for i in ups]
    kernels = [_shape(weights, f"dec.ups.{i}.weight")[2] for i in ups]
    kind = "1" if any(k.startswith("dec.resblocks.0.convs1.") for k in weights) else "2"
    conv = "convs1" if kind == "1" else "convs"
    n_blocks = len(_indices(weights, r"dec\.resblocks\.(\d+)\..*"))
    if not ups or n_blocks % len(ups):
        raise PiperFormatError(f"the decoder has {len(ups)} upsamplers and {n_blocks} resblocks")
    block_kernels, block_dilations = [], []
    for j in range(n_blocks // len(ups)):
        block_kernels.append(_shape(weights, f"dec.resblocks.{j}.{conv}.0.weight")[2])
        n_convs = len(_indices(weights, rf"dec\.resblocks\.{j}\.{conv}\.(\d+)\.weight"))
        block_dilations.append(tuple(
            _attribute(model, f"/dec/resblocks.{j}/{conv}.{i}/Conv", "dilations")[0]
            for i in range(n_convs)
        ))  # fmt: skip
    return {
        "resblock": kind,
        "resblock_kernel_sizes": tuple(block_kernels),
        "resblock_dilation_sizes": tuple(block_dilations),
        "upsample_rates": tuple(rates),
        "upsample_kernel_sizes": tuple(kernels),
        "upsample_initial_channel": _shape(weights, "dec.conv_pre.weight")[0],
    }


def _flow_dilation_rate(model: Any, weights: dict[str, np.ndarray]) -> int:
    if "flow.flows.0.enc.in_layers.1.weight" not in weights:
        return 1  # one WaveNet layer: the rate is never used
    return _attribute(model, "/flow/flows.0/enc/in_layers.1/Conv", "dilations")[0]


def infer_config(model: Any, weights: dict[str, np.ndarray], sample_rate: int) -> VitsConfig:
    """The `VitsConfig` of the graph whose weights are `weights`."""
    n_vocab, hidden = _shape(weights, "enc_p.emb.weight")
    rel = _shape(weights, "enc_p.encoder.attn_layers.0.emb_rel_k")
    ffn = _shape(weights, "enc_p.encoder.ffn_layers.0.conv_1.weight")
    dp_flows = _indices(weights, r"dp\.flows\.(\d+)\.pre\.weight")
    dp_flow = f"dp.flows.{dp_flows[0]}" if dp_flows else "dp.flows.?"
    dp_proj = _shape(weights, f"{dp_flow}.proj.weight")[0]
    couplings = _indices(weights, r"flow\.flows\.(\d+)\.pre\.weight")
    speakers = weights.get("emb_g.weight")
    values: dict[str, Any] = {
        "n_vocab": n_vocab,
        "inter_channels": _shape(weights, "enc_p.proj.weight")[0] // 2,
        "hidden_channels": hidden,
        "filter_channels": ffn[0],
        "n_heads": hidden // rel[2],
        "n_layers": len(_indices(weights, r"enc_p\.encoder\.attn_layers\.(\d+)\.conv_q\.weight")),
        "kernel_size": ffn[2],
        "window_size": (rel[1] - 1) // 2,
        "dp_filter_channels": _shape(weights, "dp.pre.weight")[0],
        "dp_kernel_size": _shape(weights, "dp.convs.convs_sep.0.weight")[2],
        "dp_n_layers": len(_indices(weights, r"dp\.convs\.convs_sep\.(\d+)\.weight")),
        # ConvFlows sit at odd indices 1, 3, ...; the last one's index gives their count.
        "dp_n_flows": (dp_flows[-1] + 1) // 2 if dp_flows else 0,
        "dp_flow_n_layers": len(
            _indices(weights, rf"{re.escape(dp_flow)}\.convs\.convs_sep\.(\d+)\.weight")
        ),
        "dp_num_bins": (dp_proj + 1) // 3,  # one half-channel: 3K - 1 spline parameters
        "flow_n_flows": len(couplings),
        "flow_hidden_channels": _shape(weights, "flow.flows.0.pre.weight")[0],
        "flow_kernel_size": _shape(weights, "flow.flows.0.enc.in_layers.0.weight")[2],
        "flow_dilation_rate": _flow_dilation_rate(model, weights),
        "flow_n_layers": len(_indices(weights, r"flow\.flows\.0\.enc\.in_layers\.(\d+)\.weight")),
        **_decoder_config(model, weights),
        "n_speakers": speakers.shape[0] if speakers is not None else 1,
        "gin_channels": speakers.shape[1] if speakers is not None else 0,
        "sample_rate": sample_rate,
    }
    try:
        return VitsConfig(**values)
    except ValueError as exc:
        raise PiperFormatError(f"inconsistent sizes: {exc}") from None


def _split_state_dicts(
    config: VitsConfig, weights: dict[str, np.ndarray]
) -> dict[str, dict[str, torch.Tensor]]:
    """Each part's state dict, filled from `weights`; refuses missing or misshapen weights."""
    result: dict[str, dict[str, torch.Tensor]] = {}
    missing: list[str] = []
    for stage in ("frontend", "acoustic", "vocoder"):
        expected = build_part(stage, config).state_dict()
        state: dict[str, torch.Tensor] = {}
        for key, tensor in expected.items():
            if key not in weights:
                missing.append(key)
                continue
            value = torch.from_numpy(np.array(weights[key], dtype=np.float32))  # a writable copy
            if tuple(value.shape) != tuple(tensor.shape):
                raise PiperFormatError(
                    f"weight {key} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}"
                )
            state[key] = value
        result[stage] = state
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise PiperFormatError(f"missing weights: {', '.join(missing[:3])}{more}")
    return result


def read_piper_json(config_path: Path) -> dict[str, Any]:
    """The voice's ``.onnx.json``; refuses a missing/unreadable file or unsupported phonemes."""
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PiperFormatError(f"voice config {config_path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PiperFormatError(f"voice config {config_path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise PiperFormatError(f"voice config {config_path} is not a JSON object")
    phoneme_type = data.get("phoneme_type", "espeak")
    if phoneme_type not in SUPPORTED_PHONEME_TYPES:
        raise PiperFormatError(
            f"phoneme_type {phoneme_type!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_PHONEME_TYPES)})"
        )
    for key in ("phoneme_id_map", "audio"):
        if not isinstance(data.get(key), dict):
            raise PiperFormatError(f"voice config {config_path} has no {key!r} object")
    return data


def _load_onnx(onnx_path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(onnx_path))
    except FileNotFoundError:
        raise PiperFormatError(f"{onnx_path} not found") from None
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise PiperFormatError(f"{onnx_path.name} is not an ONNX model ({exc})") from None
    if not model.graph.node:
        raise PiperFormatError(f"{onnx_path.name} is not an ONNX model (no graph nodes)")
    return model


def _check_vits(model: Any, onnx_path: Path) -> None:
    present = {n.name.strip("/").split("/")[0] for n in model.graph.node}
    present |= {t.name.split(".")[0] for t in model.graph.initializer}
    missing = [m for m in VITS_MODULES if m not in present]
    if missing:
        raise PiperFormatError(
            f"{onnx_path.name} is not a VITS voice: its graph has no {', '.join(missing)} module"
            + ("s" if len(missing) > 1 else "")
        )


def read_piper(onnx_path: Path, config_path: Path) -> PiperVoice:
    """Read a Piper voice. Raises `PiperFormatError` with a one-line reason."""
    piper_json = read_piper_json(config_path)
    model = _load_onnx(onnx_path)
    _check_vits(model, onnx_path)
    weights = read_graph_weights(model)
    sample_rate = int(piper_json["audio"].get("sample_rate", 22050))
    config = infer_config(model, weights, sample_rate)
    return PiperVoice(config, piper_json, _split_state_dicts(config, weights))
