"""What holds a clip's frames together: optical flow, warping, where the flow can be trusted,
and the temporal loss of Ruder, Dosovitskiy and Brox ("Artistic style transfer for videos", 2016).

Flow is computed on the content frames (OpenCV's DIS, both directions); the previous stylized
frame is warped into the current frame with the backward flow; a pixel counts only where
the forward and backward flows agree (not occluded) and the flow is smooth (not a motion
boundary), section 3.2 of the paper. OpenCV is imported inside the functions that use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .color import rgb_to_yiq
from .images import to_tensor

# Ruder et al.'s consistency test: forward and backward flow cancel up to this relative
# error plus an absolute slack in pixels², and a flow gradient this large marks a motion boundary.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_SLACK = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_SLACK = 0.002


def optical_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dense flow from `source` to `target` (both (H, W, 3) uint8 RGB): (H, W, 2) float32, the
    displacement (dx, dy) that takes each source pixel to where it is in the target (DIS, medium)."""
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) for image in (source, target)]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(gray[0], gray[1], None)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` sampled at each pixel plus `flow` (backward warping): with the flow from frame t
    to frame t-1, frame t-1's picture moved into frame t. Bilinear, edges replicated."""
    import cv2

    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def consistency_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """(H, W) float32: 1 where frame t's pixel is seen in frame t-1 and its flow is trusted, else 0.

    `forward` is the flow t-1 -> t, `backward` t -> t-1. Occluded pixels (the two flows do not
    cancel), motion boundaries (a steep backward flow) and pixels whose source lies outside
    frame t-1 are 0."""
    height, width = backward.shape[:2]
    forward_at = warp(forward, backward)  # the forward flow at the point each pixel comes from
    total = forward_at + backward
    agree = (total**2).sum(-1) <= CONSISTENCY_RELATIVE * ((forward_at**2).sum(-1) + (backward**2).sum(-1)) + (
        CONSISTENCY_SLACK
    )
    du_y, du_x = np.gradient(backward[..., 0])
    dv_y, dv_x = np.gradient(backward[..., 1])
    steep = du_x**2 + du_y**2 + dv_x**2 + dv_y**2 > BOUNDARY_RELATIVE * (backward**2).sum(-1) + BOUNDARY_SLACK
    grid_x, grid_y = np.meshgrid(np.arange(width), np.arange(height))
    source_x, source_y = grid_x + backward[..., 0], grid_y + backward[..., 1]
    inside = (source_x >= 0) & (source_x <= width - 1) & (source_y >= 0) & (source_y <= height - 1)
    return (agree & ~steep & inside).astype(np.float32)


@dataclass(frozen=True)
class TemporalPrior:
    """The previous stylized frame warped into this frame, and where to trust it, at the output size."""

    warped: Image.Image  # RGB, the size of the output frame
    mask: np.ndarray  # (H, W) float32 in {0, 1}
    start: Image.Image  # where the frame's optimization starts: `warped` where trusted, the content elsewhere

    @property
    def coverage(self) -> float:
        """The share of the frame's pixels the temporal loss holds."""
        return float(self.mask.mean())


def temporal_prior(previous_content: Image.Image, content: Image.Image, previous_output: Image.Image) -> TemporalPrior:
    """Flow between two content frames (at the output's size, both ways) applied to the
    previous output: the start image and the target of the temporal loss for this frame."""
    size = previous_output.size
    before = np.asarray(previous_content.convert("RGB").resize(size, Image.Resampling.LANCZOS))
    now = np.asarray(content.convert("RGB").resize(size, Image.Resampling.LANCZOS))
    forward = optical_flow(before, now)
    backward = optical_flow(now, before)
    warped = warp(np.asarray(previous_output.convert("RGB")), backward)
    mask = consistency_mask(forward, backward)
    # Where the past is not seen (a strip that came into view, an occlusion) the warp only smears
    # its border: start those pixels from the content, as a frame stylized alone would.
    start = mask[..., None] * warped + (1 - mask[..., None]) * now
    return TemporalPrior(Image.fromarray(warped, "RGB"), mask, Image.fromarray(start.round().astype(np.uint8), "RGB"))


class TemporalLoss:
    """weight * Σ c (x - ω)² / Σ 1, Ruder et al.'s short-term loss: the mean squared difference,
    over the trusted pixels c, from the warped previous frame ω (the mean over all D pixel
    values, as in the paper, so a frame with little trusted area pulls less)."""

    def __init__(self, prior: TemporalPrior, weight: float, *, luminance: bool = False):
        self.prior = prior
        self.weight = weight
        self.luminance = luminance

    def at(self, dims: tuple[int, int], device: torch.device):
        """The loss at one scale's (width, height): a function of the (1, 3, H, W) image."""
        target = to_tensor(self.prior.warped, dims).to(device)
        if self.luminance:  # the engine optimises luminance, rendered as three equal channels
            target = rgb_to_yiq(target)[:, :1].expand(-1, 3, -1, -1)
        mask = Image.fromarray((self.prior.mask * 255).astype(np.uint8), "L")
        if mask.size != dims:
            mask = mask.resize(dims, Image.Resampling.BILINEAR)
        weights = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255).to(device)[None, None]  # (1, 1, H, W)
        weight = self.weight

        def loss(image: torch.Tensor) -> torch.Tensor:
            return weight * (weights * (image.float() - target) ** 2).mean()

        return loss
