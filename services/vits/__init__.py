"""VITS inference in torch, split into Voxline's three stages.

A VITS voice (Piper's ONNX voices are VITS) maps phoneme ids to audio in four learned pieces:
a text encoder (``enc_p``) that gives a Gaussian prior per id, a stochastic duration predictor
(``dp``) that says how many 256-sample frames each id lasts, a normalising flow (``flow``) that
turns a sample of the prior, stretched to frames, into the decoder's latent, and a HiFi-GAN
decoder (``dec``) that turns the latent into a waveform. Voxline runs them as three parts:

- `parts.VitsFrontendModel`: ``enc_p`` + ``dp`` -> prior mean/log-scale and integer durations;
- `parts.VitsAcousticModel`: expand the prior by the durations, sample, reverse ``flow``;
- `parts.VitsDecoderModel`: ``dec``.

Start with `reference` (ids -> audio in one screen); `piper` reads a Piper voice, and
`voice_folder` loads the parts from a voice folder written by ``voxline voices import``.
"""
