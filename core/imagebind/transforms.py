"""Turn decoded images and waveforms into the tensors ImageBind's towers take.

Both functions reproduce upstream ImageBind's `load_and_transform_vision_data` and
`load_and_transform_audio_data` (from a decoded input rather than a file path), with one
deliberate difference for audio: upstream subtracts each clip's mean in place on views of one
waveform, so for audio under 8 s, whose clips overlap, clips 2 and 3 are computed from audio
that earlier clips already shifted. Here every clip is computed from its own untouched slice.

Two choices of ours happen before these functions, in decoding: transparent images are
composited on white (`core.media.image`; upstream drops the alpha channel), and the channels of
a stereo clip are averaged (`core.media.audio`; upstream reads the left channel only). Audio is
resampled to 16 kHz with `torchaudio.functional.resample`, as upstream.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from PIL import Image

from core.errors import BadInputError

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SAMPLE_RATE = 16_000
CLIP_SECONDS = 2
CLIPS_PER_AUDIO = 3
MEL_BINS = 128
TARGET_FRAMES = 204
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138
_FRAME_LENGTH_MS = 25.0
_FRAME_SHIFT_MS = 10.0
_FRAME_SAMPLES = int(SAMPLE_RATE * _FRAME_LENGTH_MS / 1000)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """`FloatTensor[3, 224, 224]`: shorter side to 224 (bicubic), centre crop, CLIP mean/std.

    The image should already be RGB: `core.media.image.decode_image` composites transparency on
    white, which is our choice, not upstream's (upstream's plain `convert("RGB")` drops the alpha
    channel, so a transparent area shows whatever colour its invisible pixels hold, often black).
    Any other mode given here is converted with Pillow's plain `convert("RGB")`, as upstream.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    # torchvision's resize, center_crop, to_tensor and normalize on a PIL image, step for step
    # (the same numbers), without importing torchvision, which costs time and memory at startup
    # (benchmarks/README.md, startup and memory).
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(IMAGE_SIZE * long / short)
    size = (IMAGE_SIZE, new_long) if width <= height else (new_long, IMAGE_SIZE)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    left = int(round((image.width - IMAGE_SIZE) / 2.0))
    top = int(round((image.height - IMAGE_SIZE) / 2.0))
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    pixels = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    tensor = pixels.to(torch.float32).div(255)
    mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return tensor.sub_(mean).div_(std)


def clip_sample_ranges(
    num_samples: int,
    sample_rate: int = SAMPLE_RATE,
    clip_seconds: int = CLIP_SECONDS,
    clips: int = CLIPS_PER_AUDIO,
) -> list[tuple[int, int]]:
    """`[start, end)` sample indices of the clips, as upstream's clip sampler places them.

    Upstream uses pytorchvideo's `ConstantClipsPerVideoSampler`: with `spare` = duration minus
    clip length (at least 0), clip `k` starts at `k * spare / clips` seconds and lasts
    `clip_seconds`; indices are the floor of seconds times the rate, cut at the end of the audio.
    The arithmetic follows upstream's exactly (duration as a float, then exact fractions), so the
    indices match to the sample. A clip shorter than its length ends at the end of the audio; all
    clips start at 0 when the audio is not longer than one clip.
    """
    duration = num_samples / sample_rate
    spare = Fraction(max(duration - clip_seconds, 0))
    step = spare / clips
    ranges = []
    for k in range(clips):
        start = step * k
        end = start + clip_seconds
        ranges.append((int(start * sample_rate), min(int(end * sample_rate), num_samples)))
    return ranges


def _as_mono_tensor(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(waveform, np.ndarray) and not waveform.flags.writeable:
        waveform = waveform.copy()  # torch warns about read-only arrays; we never write anyway
    samples = torch.as_tensor(waveform)
    if samples.ndim == 2 and samples.shape[0] == 1:
        samples = samples[0]
    if samples.ndim != 1:
        raise ValueError(f"expected a mono waveform [n] or [1, n], got {tuple(samples.shape)}")
    if not samples.is_floating_point():
        raise ValueError(f"expected float samples, got {samples.dtype}")
    return samples.to(torch.float32)


def _clip_fbank(clip: torch.Tensor) -> torch.Tensor:
    """`[1, 128, 204]` normalised log-mel filterbank of one clip; `clip` is not modified."""
    if clip.numel() < _FRAME_SAMPLES:
        # Too short for one 25 ms frame: pad with silence so Kaldi yields one frame.
        clip = torch.nn.functional.pad(clip, (0, _FRAME_SAMPLES - clip.numel()))
    centred = (clip - clip.mean()).unsqueeze(0)
    fbank = kaldi.fbank(
        centred,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=MEL_BINS,
        dither=0.0,
        frame_length=_FRAME_LENGTH_MS,
        frame_shift=_FRAME_SHIFT_MS,
    ).transpose(0, 1)
    frames = fbank.shape[1]
    if frames < TARGET_FRAMES:
        fbank = torch.nn.functional.pad(fbank, (0, TARGET_FRAMES - frames))
    else:
        fbank = fbank[:, :TARGET_FRAMES]
    mean = torch.tensor(AUDIO_MEAN, dtype=fbank.dtype)
    std = torch.tensor(AUDIO_STD, dtype=fbank.dtype)
    return ((fbank - mean) / std).unsqueeze(0)


def waveform_to_clips(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """`FloatTensor[3, 1, 128, 204]` from mono float samples at 16 kHz (the input is not changed).

    Three 2 s clips spread over the audio as upstream places them; each becomes a Kaldi
    filterbank (128 mel bins, Hanning window, 25 ms frames every 10 ms, no dither, HTK
    compatible, no energy) of the clip minus its mean, cut or zero-padded to 204 frames, then
    normalised with mean -4.268 and std 9.138. Audio shorter than a clip gives three equal clips
    whose missing frames are zeros before normalisation, as upstream.
    """
    samples = _as_mono_tensor(waveform)
    if samples.numel() == 0:
        raise BadInputError("the audio clip is empty — send a clip with some sound in it")
    clips = [_clip_fbank(samples[start:end]) for start, end in clip_sample_ranges(samples.numel())]
    return torch.stack(clips)
