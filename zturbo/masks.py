"""Masks for inpainting, as ComfyUI computes them (shared by the inpaint nodes, `generate --mask` and
ControlNet inpainting).

MASK is float32 [B, H, W] (or [H, W]) in 0..1, 1 = repaint. IMAGE is [B, H, W, C]. Pixel masks reach
latent space through `to_latent` (bilinear, ComfyUI's `reshape_mask`); `grow` and `blur` are
ComfyUI's GrowMask and ImageBlur; `composite` is ImageCompositeMasked/LatentCompositeMasked's
paste; `neutral_fill` is VAEEncodeForInpaint's grey (0.5) fill of the masked pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from zturbo.errors import InputError

# `generate --mask-blur R` is ComfyUI's ImageBlur(blur_radius=R, sigma=MASK_BLUR_SIGMA): its kernel spans
# ±R pixels with sigma relative to R, so 0.4 puts ±2.5 sigma inside the kernel (a soft, full-width edge).
MASK_BLUR_SIGMA = 0.4
MAX_BLUR_RADIUS = 31  # ImageBlur's limit


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """[H, W], [B, H, W] or [B, 1, H, W] → [B, H, W] float32."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1])).float()


def check_size(mask: torch.Tensor, image: torch.Tensor, what: str = "mask") -> None:
    """A mask must be its image's size (IMAGE [B, H, W, C])."""
    mh, mw = mask.shape[-2:]
    ih, iw = image.shape[1:3]
    if (mh, mw) != (ih, iw):
        raise InputError(f"{what} is {mw}×{mh} pixels but the image is {iw}×{ih}; they must be the same size")


def check_shape(mask: torch.Tensor, width: int, height: int, what: str, target: str, cell: int = 16) -> None:
    """A mask that graph nodes resize to `target` (width×height), as ComfyUI does, must have its shape:
    a half-size mask is fine, one of another aspect ratio would be stretched over the image. `cell`
    (in the target's units) allows for the crop to the VAE's multiple (a mask of the uncropped image)."""
    mh, mw = mask.shape[-2:]
    ratio = (mw * height) / max(mh * width, 1)
    slack = 1 + cell / max(min(width, height), 1) + 0.01
    if not 1 / slack <= ratio <= slack:
        raise InputError(
            f"{what} is {mw}×{mh} but {target} is {width}×{height}: another shape, so it would be "
            "stretched; give a mask of the image's size"
        )


def resize(mask: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resize of a MASK to (height, width) (how ComfyUI fits masks to images)."""
    batch = as_batch(mask)
    if batch.shape[-2:] == (height, width):
        return batch
    return F.interpolate(batch[:, None], size=(height, width), mode="bilinear")[:, 0]


def to_latent(mask: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A MASK as a noise mask for latents of `shape` (B, C, h, w): bilinear to (h, w), repeated over
    channels and batch (ComfyUI's `prepare_mask`)."""
    batch = as_batch(mask)[:, None]
    out = F.interpolate(batch, size=tuple(shape[2:]), mode="bilinear")
    out = out.repeat(1, shape[1], 1, 1)
    return repeat_to_batch(out, shape[0])


def repeat_to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """ComfyUI's `repeat_to_batch_size`: trim a longer batch, repeat a shorter one."""
    if x.shape[0] > batch:
        return x[:batch]
    if x.shape[0] < batch:
        return x.repeat((-(-batch // x.shape[0]),) + (1,) * (x.ndim - 1))[:batch]
    return x


def grow(mask: torch.Tensor, pixels: int, tapered_corners: bool = True) -> torch.Tensor:
    """ComfyUI's GrowMask: `pixels` rounds of 3×3 grey dilation (erosion when negative); tapered
    corners use the cross-shaped kernel, so growth is a diamond. Edges repeat the border pixel."""
    out = as_batch(mask)[:, None]
    for _ in range(abs(pixels)):
        padded = F.pad(out, (1, 1, 1, 1), mode="replicate")
        neighbours = [padded[:, :, 1:-1, 1:-1]]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy or dx) and not (tapered_corners and dy and dx):
                    neighbours.append(
                        padded[:, :, 1 + dy : padded.shape[2] - 1 + dy, 1 + dx : padded.shape[3] - 1 + dx]
                    )
        stacked = torch.stack(neighbours)
        out = stacked.amax(0) if pixels > 0 else stacked.amin(0)
    return out[:, 0]


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """ComfyUI's ImageBlur kernel: a Gaussian over coordinates spanning −1..1 (sigma relative)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


def blur_image(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """ComfyUI's ImageBlur on IMAGE [B, H, W, C]: reflect-padded Gaussian of kernel 2·radius+1."""
    if radius == 0:
        return image
    if radius >= min(image.shape[1], image.shape[2]):
        raise InputError(f"blur radius {radius} needs an image larger than {radius} pixels a side")
    channels = image.shape[-1]
    kernel = gaussian_kernel(radius * 2 + 1, sigma).to(image)[None, None].repeat(channels, 1, 1, 1)
    x = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    return F.conv2d(x, kernel, groups=channels).movedim(1, -1)


def blur(mask: torch.Tensor, radius: int, sigma: float = MASK_BLUR_SIGMA) -> torch.Tensor:
    """A MASK through ImageBlur (as MaskToImage → ImageBlur → ImageToMask would give)."""
    if radius == 0:
        return as_batch(mask)
    return blur_image(as_batch(mask)[..., None], radius, sigma)[..., 0]


def neutral_fill(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VAEEncodeForInpaint's input: pixels under the (rounded) mask set to 0.5 grey, others kept."""
    keep = (1.0 - as_batch(mask).round())[..., None]
    return (pixels[..., :3] - 0.5) * keep + 0.5


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 1,
    resize_source: bool = False,
) -> torch.Tensor:
    """Paste channels-first `source` into a copy of `destination` at (x, y) (in units of 1/`multiplier`
    of a cell: 8 for latents), weighted by `mask` (bilinear to the source's size); ComfyUI's `composite`.
    Where the mask is 0 the destination is returned bit for bit."""
    destination = destination.clone()
    source = source.to(destination.device)
    if resize_source:
        source = F.interpolate(source, size=tuple(destination.shape[-2:]), mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = F.interpolate(
            as_batch(mask).to(destination)[:, None], size=tuple(source.shape[-2:]), mode="bilinear"
        )
        weight = repeat_to_batch(weight, source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    weight = weight[:, :, :visible_h, :visible_w]
    region = destination[..., top:bottom, left:right]
    pasted = weight * source[..., :visible_h, :visible_w] + (1.0 - weight) * region
    destination[..., top:bottom, left:right] = pasted
    return destination
