"""Voice-quality measures from Praat (through praat-parselmouth): how clean the voicing is.

* Harmonics-to-noise ratio (HNR, dB): Praat's cross-correlation harmonicity, averaged over
  voiced frames (Praat's ``Get mean`` skips unvoiced ones). Breathy, smeared voicing — what
  a weak vocoder produces — lowers it.
* Smoothed cepstral peak prominence (CPPS, dB): how strongly periodic the spectrum is;
  robust to what HNR's pitch tracking misses.

Both are standard in voice research and computed exactly as Praat's own commands do; no
pitch tracker is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Praat's defaults for speech (75 Hz pitch floor; 0.01 s steps; 0.1 silence threshold;
#: one period per window for the cross-correlation harmonicity).
PITCH_FLOOR_HZ = 75.0
TIME_STEP_S = 0.01


@dataclass(frozen=True)
class VoiceMeasures:
    """One utterance's Praat measures."""

    hnr_db: float
    cpps_db: float


def _sound(pcm: np.ndarray, sample_rate: int):  # -> parselmouth.Sound
    import parselmouth

    audio = np.asarray(pcm, dtype=np.float64)
    if np.issubdtype(np.asarray(pcm).dtype, np.integer):
        audio = audio / 32768.0
    return parselmouth.Sound(audio, sampling_frequency=float(sample_rate))


def hnr_db(pcm: np.ndarray, sample_rate: int) -> float:
    """Mean harmonics-to-noise ratio (dB) over voiced frames (Praat: To Harmonicity (cc))."""
    from parselmouth.praat import call

    harmonicity = _sound(pcm, sample_rate).to_harmonicity_cc(
        time_step=TIME_STEP_S, minimum_pitch=PITCH_FLOOR_HZ
    )
    return float(call(harmonicity, "Get mean", 0, 0))


def cpps_db(pcm: np.ndarray, sample_rate: int) -> float:
    """Smoothed cepstral peak prominence (dB), Praat's PowerCepstrogram "Get CPPS" with
    its standard settings (60 Hz-330 Hz quefrency search, 0.02 s x 0.0005 s smoothing)."""
    from parselmouth.praat import call

    sound = _sound(pcm, sample_rate)
    cepstrogram = call(sound, "To PowerCepstrogram", 60.0, 0.002, 5000.0, 50.0)
    return float(
        call(
            cepstrogram, "Get CPPS", "yes", 0.02, 0.0005, 60.0, 330.0, 0.05,
            "parabolic", 0.001, 0.0, "Exponential decay", "Robust",
        )
    )  # fmt: skip


def measure(pcm: np.ndarray, sample_rate: int) -> VoiceMeasures:
    """Both measures for one utterance."""
    return VoiceMeasures(hnr_db(pcm, sample_rate), cpps_db(pcm, sample_rate))
