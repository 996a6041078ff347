"""Qwen2-VL's, LLaVA-OneVision's and LLaVA-NeXT-Video's video processors in plain torch, for tests
(no torchvision).

transformers' ``Qwen2VLVideoProcessor`` imports torchvision at module load (its resize), so
a processor built from it cannot run where torchvision is absent. :class:`TorchQwen2VLVideoProcessor`
follows its rules for frames given as PIL images or ``[T, H, W, C]`` arrays / tensors: every
frame of a video resized to one size (``smart_resize`` with factor ``patch_size * merge_size``,
bicubic with antialiasing as torchvision does on tensors), rescaled to ``[0, 1]``, normalized
with CLIP's mean and std, the frame count padded to a multiple of ``temporal_patch_size`` by
repeating the last frame, and HF's own patch layout (time, merged rows, merged cols, then the
``merge_size x merge_size`` block), giving ``pixel_values_videos`` ``[patches, C * T_p * P * P]``
and ``video_grid_thw`` ``[videos, 3]``. It samples no frames and decodes no files: pass the
frames. With a real checkpoint and torchvision installed, the checkpoint's own
``Qwen2VLVideoProcessor`` does this; the model sees the same layout either way.
:class:`TorchLlavaOnevisionVideoProcessor` does the same for ``LlavaOnevisionVideoProcessor``
(each frame resized to the tower's square size, CLIP-normalized, ``[videos, frames, 3, H, W]``), and
:class:`TorchLlavaNextVideoVideoProcessor` for ``LlavaNextVideoVideoProcessor`` (shortest edge resized,
centre crop, CLIP-normalized).

Examples:
    >>> import numpy as np
    >>> processor = TorchQwen2VLVideoProcessor(patch_size=4)
    >>> out = processor([np.zeros((4, 16, 16, 3), dtype=np.uint8)])
    >>> out["pixel_values_videos"].shape, out["video_grid_thw"].tolist()
    (torch.Size([32, 96]), [[2, 4, 4]])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)


class TorchQwen2VLVideoProcessor:
    """Qwen2-VL's video preprocessing (resize, normalize, temporal patches) in plain torch.

    Args:
        patch_size: The vision tower's patch size.
        merge_size: The merger's spatial merge (2: 2x2 patches per token).
        temporal_patch_size: Frames per temporal patch (2 for Qwen2-VL and Qwen2.5-VL).
        min_pixels: Lower bound on each resized frame's area.
        max_pixels: Upper bound on each resized frame's area.

    Examples:
        >>> from PIL import Image
        >>> frames = [Image.new("RGB", (24, 16)) for _ in range(2)]
        >>> TorchQwen2VLVideoProcessor(patch_size=4)([frames])["video_grid_thw"].tolist()
        [[1, 4, 6]]
    """

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(
        self,
        patch_size: int = 14,
        merge_size: int = 2,
        temporal_patch_size: int = 2,
        min_pixels: int = 8 * 8,
        max_pixels: int = 32 * 32,
    ) -> None:
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self), video_processor_type=type(self).__name__)

    def _merge_and_standardize_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return dict(merge_size=self.merge_size, **kwargs)

    def get_num_of_video_patches(
        self, num_frames: int, height: int, width: int, videos_kwargs: Any = None
    ) -> int:
        """Patches of a video of ``num_frames`` frames of ``height x width`` pixels."""
        h, w = self._size(height, width)
        t = -(-num_frames // self.temporal_patch_size)
        return t * (h // self.patch_size) * (w // self.patch_size)

    def _size(self, height: int, width: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor = self.patch_size * self.merge_size
        return smart_resize(
            height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )

    def __call__(self, videos: Any, return_tensors: Any = None, **kwargs: Any) -> Any:
        from transformers import BatchFeature

        if _is_pil_frames(videos) or getattr(videos, "ndim", None) == 4:
            videos = [videos]
        from transformers.video_utils import VideoMetadata

        patches, grids, metadata = [], [], []
        for video in videos:
            frames = _frames_tensor(video)
            flat, grid = self._one(frames)
            patches.append(flat)
            grids.append(grid)
            n = int(frames.shape[0])  # HF's default metadata for frames given as they are (no fps known)
            metadata.append(VideoMetadata(total_num_frames=n, fps=None, frames_indices=list(range(n))))
        out = BatchFeature(
            {"pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids)},
            tensor_type=return_tensors,
        )
        out["video_metadata"] = metadata  # what HF's video processors return (Qwen2.5-VL's reads fps from it)
        return out

    def _one(self, video: Float[Tensor, "time channels height width"]) -> tuple[Tensor, list[int]]:
        height, width = video.shape[-2:]
        h, w = self._size(int(height), int(width))
        if (h, w) != (height, width):
            video = F.interpolate(video, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        video = video / 255.0
        mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_STD).view(1, 3, 1, 1)
        video = (video - mean) / std
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -video.shape[0] % tp:
            video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
        t, c = video.shape[0] // tp, video.shape[1]
        gh, gw = h // p, w // p
        patches = video.reshape(t, tp, c, gh // m, m, p, gw // m, m, p)
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # HF's layout: t, rows, cols, block, c, tp, p, p
        return patches.reshape(t * gh * gw, c * tp * p * p), [t, gh, gw]


def _frames_tensor(video: Any) -> Float[Tensor, "time channels height width"]:
    """One video (``[T, H, W, C]`` or ``[T, C, H, W]``, array or tensor) as float ``[T, 3, H, W]``."""
    if _is_pil_frames(video):
        array = np.stack([np.asarray(frame.convert("RGB")) for frame in video])
    else:
        array = video.detach().cpu().numpy() if isinstance(video, Tensor) else np.asarray(video)
    if array.ndim != 4:
        raise ValueError(
            f"A video is a list of frames (PIL images) or an array [T, H, W, C]; got an array of shape "
            f"{tuple(array.shape)}."
        )
    if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    frames = torch.from_numpy(np.ascontiguousarray(array)).float()
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    return frames


def _is_pil_frames(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(hasattr(f, "convert") and hasattr(f, "mode") for f in value)
    )


class TorchLlavaOnevisionVideoProcessor:
    """LLaVA-OneVision's video preprocessing in plain torch (no torchvision): every frame resized to
    ``size x size`` (bicubic with antialiasing), rescaled to ``[0, 1]`` and normalized with CLIP's
    mean and std, as ``LlavaOnevisionVideoProcessor`` does.

    Returns ``pixel_values_videos`` ``[videos, frames, 3, size, size]``; the videos of one call must
    have the same frame count (HF stacks them into one tensor too).

    Args:
        size: The tower's ``image_size`` (384 for llava-onevision-qwen2-7b-ov-hf).
        image_mean: Per-channel mean subtracted after rescaling (CLIP's by default).
        image_std: Per-channel std divided by (CLIP's by default). The toy video model
            (:mod:`hooked_mllm.toy.video_model`) uses mean 0 and std 1, so black stays exactly 0.

    Examples:
        >>> import numpy as np
        >>> out = TorchLlavaOnevisionVideoProcessor(size=16)([np.zeros((3, 20, 24, 3), dtype=np.uint8)])
        >>> tuple(out["pixel_values_videos"].shape)
        (1, 3, 3, 16, 16)
    """

    model_input_names = ["pixel_values_videos"]
    family = "LLaVA-OneVision"

    def __init__(
        self,
        size: int = 384,
        image_mean: tuple[float, ...] = _MEAN,
        image_std: tuple[float, ...] = _STD,
    ) -> None:
        self.size = size
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self), video_processor_type=type(self).__name__)

    def __call__(self, videos: Any, return_tensors: Any = None, **kwargs: Any) -> Any:
        from transformers import BatchFeature

        if _is_pil_frames(videos) or getattr(videos, "ndim", None) == 4:
            videos = [videos]
        out = []
        for video in videos:
            frames = self._resize(_frames_tensor(video))
            mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std).view(1, 3, 1, 1)
            out.append((frames / 255.0 - mean) / std)
        counts = sorted({int(v.shape[0]) for v in out})
        if len(counts) > 1:
            raise ValueError(
                f"{self.family} stacks the videos of one call into one tensor, so they need one frame "
                f"count; got videos of {counts} frames. Sample the same number of frames from each video."
            )
        return BatchFeature({"pixel_values_videos": torch.stack(out)}, tensor_type=return_tensors)

    def _resize(self, frames: Float[Tensor, "t 3 h w"]) -> Float[Tensor, "t 3 size size"]:
        """Every frame to ``size x size`` (bicubic with antialiasing; aspect ratio not kept)."""
        if tuple(frames.shape[-2:]) != (self.size, self.size):
            frames = F.interpolate(
                frames, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True
            )
        return frames


class TorchLlavaNextVideoVideoProcessor(TorchLlavaOnevisionVideoProcessor):
    """LLaVA-NeXT-Video's video preprocessing in plain torch (no torchvision): every frame resized so
    its shortest edge is ``size`` (bicubic with antialiasing), centre-cropped to ``size x size``,
    rescaled to ``[0, 1]`` and normalized with CLIP's mean and std, as ``LlavaNextVideoVideoProcessor``
    does (its defaults: shortest edge 224, crop 224).

    Returns ``pixel_values_videos`` ``[videos, frames, 3, size, size]``; the videos of one call must
    have the same frame count (HF stacks them into one tensor too).

    Args:
        size: The tower's ``image_size`` (336 for LLaVA-NeXT-Video-7B-hf).

    Examples:
        >>> import numpy as np
        >>> out = TorchLlavaNextVideoVideoProcessor(size=16)([np.zeros((3, 20, 24, 3), dtype=np.uint8)])
        >>> tuple(out["pixel_values_videos"].shape)
        (1, 3, 3, 16, 16)
    """

    family = "LLaVA-NeXT-Video"

    def _resize(self, frames: Float[Tensor, "t 3 h w"]) -> Float[Tensor, "t 3 size size"]:
        """The shortest edge to ``size`` (the long edge ``int(size * long / short)``, as HF's
        ``get_resize_output_image_size``), then the centre ``size x size`` crop."""
        height, width = (int(n) for n in frames.shape[-2:])
        if min(height, width) != self.size:
            if height <= width:
                new = (self.size, int(self.size * width / height))
            else:
                new = (int(self.size * height / width), self.size)
            frames = F.interpolate(frames, size=new, mode="bicubic", align_corners=False, antialias=True)
            height, width = new
        top, left = int(round((height - self.size) / 2)), int(round((width - self.size) / 2))
        return frames[..., top : top + self.size, left : left + self.size]
