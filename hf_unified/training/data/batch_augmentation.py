"""UniCLIP's multi-view augmentation on whole uint8 batches, on the training device.

Made one image at a time, two augmented views with parameters cost several times the decoding of the image, and a
DataLoader worker per few images would be needed to keep a GPU busy. Here the work is split:

1. **DataLoader workers decode only.** `ImageCanvas` (the `image_transform` of `data.DecodeConfig`) shrinks an
   image that is larger than a fixed canvas to fit it (aspect ratio kept, never enlarged) and places it at the
   canvas's top-left corner, so that images of any size stack into one uint8 batch. It records the original size and
   the size on the canvas, which is all that is needed to keep the parameters relative to the original image.
2. **The training step makes the views.** `BatchMultiViewAugmentation` maps that batch, on the training device (the
   GPU when there is one), to `pixel_values (batch_size, num_views, 3, height, width)` and
   `augmentation_params (batch_size, num_views, P)`, with batched tensor operations.

The views follow `augmentation.MultiViewAugmentation` exactly: the same recipe and presets, the same vectorised
sampler (`augmentation.sample_view_params`), the same parameter layout, and the same pixels: on an image no larger
than the canvas, each view equals what `MultiViewAugmentation.apply` makes from the original image and the view's
parameter vector (float rounding aside; tests/training/test_augmentation_batched.py checks this for every slot).
The views are rendered *from* the parameter vectors, so the vectors describe them by construction:

- crop, resize and flip are one separable linear map per view, `view = A_y @ image @ A_x.T`: the rows of `A_x`
  hold the antialiased resampling weights of torchvision's `resize(..., antialias=True)` (a triangle filter for
  bilinear, the a = -0.5 cubic for bicubic, widened by the downscaling factor) over the crop's pixels, in reverse
  order for a flipped view. Two batched matrix products render every view of the batch;
- the colour jitter in its fixed order, grayscale and normalisation are torchvision's formulas with one factor per
  view (torchvision's functionals take one factor per call); the hue shift is computed in closed form from the
  pixel's maximum, minimum and hue instead of torchvision's RGB -> HSV -> RGB round trip (same values);
- the Gaussian blur is a separable map too: per-view kernel matrices with torchvision's reflect padding.

Operations a view does not need (no jitter drawn, no grayscale, no blur) are not applied to it: which views need
them is known from the parameters, which are sampled on the CPU, so selecting them costs no device synchronisation
(rendering never waits for the GPU). On a CPU the batch is rendered in chunks of images whose temporaries stay in
the cache (`CPU_CHUNK_PIXELS`).

Cost (benchmarks/data_pipeline.md): on one CPU core the views are about 4x faster than `MultiViewAugmentation` at 64 px
and 5x at 224 px with the `"simclr"` preset, 5x at 64 px with `"small"`. The crop is a dense matrix product, so its
cost grows with the cube of the side: at 224 px with `"small"` views (crop only) a CPU core makes them about as fast
as the per-image path. On a GPU the products are small by its standards (about 70 GFLOP for 256 images of two
224 px views; an estimate, not yet measured). With `torch_compile` the colour jitter runs compiled
(`compiled_jitter`): about 2x faster on a CPU core, 1.1-1.2x for the whole 64 px `"simclr"` pipeline.

Determinism: the parameters come from a CPU `torch.Generator` seeded with the batch's `augmentation_seed`, which
`data.TrainStream` derives from `(seed, rank, batch index)`. The same batch therefore gets the same views on any
device, with any number of workers, and after an exact resume.

Usage (a trainer; the calls are in `BatchMultiViewAugmentation`'s docstring):

```python
>>> views = BatchMultiViewAugmentation(num_views=2, size=224, preset="auto")
>>> decode = data.DecodeConfig(image_transform=views.canvas, ...)  # DataLoader workers: decode + canvas
>>> inputs = views(batch, device="cuda")  # in the step: {"pixel_values", "augmentation_params"} on the GPU
```
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...image_processing import to_rgb
from .augmentation import AUGMENTATION_PARAM_DIM, IDENTITY_PARAMS, ViewAugmentation, sample_view_params
from .view_recipe import size_pair

# The batch fields `ImageCanvas` adds to every decoded sample (and `data.collate` stacks).
CANVAS_FIELDS = ("images", "image_sizes", "resized_image_sizes")
# On a CPU, views are made for chunks of images with about this many view pixels (see `render`).
CPU_CHUNK_PIXELS = 2**18

_PIL_RESAMPLING = {
    v2.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    v2.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
}


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_(min=0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    # The cubic convolution kernel with a = -0.5, which PIL and torch's antialiased bicubic resize use.
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


# Resampling filters of `torchvision.transforms.v2.functional.resize(..., antialias=True)` and their radius (in input
# pixels when upscaling; widened by the downscaling factor).
RESAMPLING_FILTERS = {v2.InterpolationMode.BILINEAR: _triangle, v2.InterpolationMode.BICUBIC: _cubic}
RESAMPLING_RADIUS = {v2.InterpolationMode.BILINEAR: 1, v2.InterpolationMode.BICUBIC: 2}


class ImageCanvas:
    """The DataLoader workers' image transform for batched views: a PIL image -> a fixed-size uint8 canvas.

    An image larger than the canvas is resized to fit it (aspect ratio kept, PIL's antialiased resampling); a
    smaller one is not enlarged. The image sits at the top-left corner; the rest is zeros and is never read.

    Args:
        size (`int` or `(height, width)`): the canvas size.
        interpolation (`InterpolationMode`, defaults to bicubic): resampling of an image larger than the canvas.

    Calling it on a PIL image (or a `[C, H, W]` tensor) returns the sample's batch fields (`CANVAS_FIELDS`):

    - `images` (`torch.ByteTensor` of shape `(3, canvas_height, canvas_width)`);
    - `image_sizes` (`torch.LongTensor` of shape `(2,)`): the original (height, width);
    - `resized_image_sizes` (`torch.LongTensor` of shape `(2,)`): the (height, width) of the image on the canvas.
    """

    def __init__(self, size: int | Sequence[int], interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC):
        self.size = size_pair(size)
        if interpolation not in _PIL_RESAMPLING:
            raise ValueError(f"interpolation must be one of {[m.value for m in _PIL_RESAMPLING]}, got {interpolation}")
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation.value})"

    def __call__(self, image) -> dict[str, torch.Tensor]:
        if isinstance(image, torch.Tensor):
            image = TF.to_pil_image(image)
        image = to_rgb(image)  # the one conversion: 16-bit scaled, alpha composited (`image_processing`)
        width, height = image.size
        canvas_h, canvas_w = self.size
        shrink = min(1.0, canvas_h / height, canvas_w / width)
        if shrink < 1:
            resized = (max(1, min(canvas_w, round(width * shrink))), max(1, min(canvas_h, round(height * shrink))))
            image = image.resize(resized, _PIL_RESAMPLING[self.interpolation])
        pixels = TF.pil_to_tensor(image)
        if pixels.shape[1:] != (canvas_h, canvas_w):
            canvas = pixels.new_zeros(3, canvas_h, canvas_w)
            canvas[:, : pixels.shape[1], : pixels.shape[2]] = pixels
            pixels = canvas
        return {
            "images": pixels,
            "image_sizes": torch.tensor([height, width]),
            "resized_image_sizes": torch.tensor([image.size[1], image.size[0]]),
        }

    def batch(self, images: Sequence) -> dict[str, torch.Tensor]:
        """The stacked canvas fields of several images (what `data.collate` makes in a DataLoader)."""
        return torch.utils.data.default_collate([self(image) for image in images])


def resampling_matrices(
    start: torch.Tensor,
    length: torch.Tensor,
    extent: torch.Tensor,
    output_size: int,
    input_size: int,
    interpolation: v2.InterpolationMode,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-view matrices that crop `[start, start + length)` along one axis and resize it to `output_size`.

    Row `j` holds the weights of torchvision's antialiased `resize` for output pixel `j` over the pixels of the crop
    (`filter((pixel + 0.5 - center_j) / max(1, length / output_size))`, normalised), so `A @ line` equals
    `resize(line[start:start + length], output_size)` for an integer crop. For a fractional crop (after the canvas
    shrank the image) the crop's pixels are those between its rounded edges.

    Args:
        start, length (`torch.FloatTensor` of shape `(num_views,)`): the crop along this axis, in input pixels.
        extent (`torch.FloatTensor` of shape `(num_views,)`): how many input pixels hold the image (the rest is
            canvas padding, never read).
        output_size, input_size: view and canvas length along this axis.
        interpolation: bilinear or bicubic.
        flip (`torch.BoolTensor` of shape `(num_views,)`, *optional*): views whose output runs backwards (a
            horizontal flip after the crop).

    Returns:
        `torch.FloatTensor` of shape `(num_views, output_size, input_size)`.
    """
    radius = RESAMPLING_RADIUS[interpolation]
    scale = length / output_size
    stretch = scale.clamp(min=1.0)  # the filter widens when the crop is downscaled (antialiasing)
    outputs = torch.arange(output_size, device=start.device) + 0.5
    if flip is not None:
        outputs = torch.where(flip[:, None], output_size - outputs, outputs)
    centers = start[:, None] + outputs * scale[:, None]
    # Only the band of pixels under the filter is evaluated: at most `taps` per output pixel, since the crop is no
    # longer than the canvas (the band starts where torchvision's does).
    taps = math.ceil(2 * radius * max(1.0, input_size / output_size)) + 1
    first_tap = (centers - radius * stretch[:, None] + 0.5).floor()
    pixels = first_tap[:, :, None] + torch.arange(taps, device=start.device)
    weights = RESAMPLING_FILTERS[interpolation]((pixels + 0.5 - centers[:, :, None]) / stretch[:, None, None])
    crop_start = torch.minimum(start.round().clamp(min=0), extent - 1)[:, None, None]
    crop_end = torch.minimum(torch.maximum((start + length).round(), crop_start[:, 0, 0] + 1), extent)[:, None, None]
    weights = weights * ((pixels >= crop_start) & (pixels < crop_end))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    # Taps outside the crop have weight 0; clamped into the canvas they add nothing where they land.
    index = pixels.clamp(0, input_size - 1).long()
    matrices = weights.new_zeros(start.shape[0], output_size, input_size)
    return matrices.scatter_add_(2, index, weights)


def gaussian_blur_matrices(sigma: torch.Tensor, kernel_size: int, size: int) -> torch.Tensor:
    """Per-view matrices of torchvision's `gaussian_blur` along one axis (reflect padding, no edge repeat).

    Args:
        sigma (`torch.FloatTensor` of shape `(num_views,)`): the standard deviation of each view's kernel.
        kernel_size: odd kernel length.
        size: the image length along this axis.

    Returns:
        `torch.FloatTensor` of shape `(num_views, size, size)`: `B @ line` is the blurred line.
    """
    radius = kernel_size // 2
    taps = torch.arange(-radius, radius + 1, device=sigma.device)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    sources = (torch.arange(size, device=sigma.device)[:, None] + taps[None]).abs()
    sources = torch.where(sources > size - 1, 2 * (size - 1) - sources, sources).clamp(0, size - 1)
    matrices = sigma.new_zeros(sigma.shape[0], size, size)
    shape = (sigma.shape[0], size, kernel_size)
    return matrices.scatter_add_(2, sources.expand(shape), kernel[:, None, :].expand(shape))


def _per_view(factors: torch.Tensor) -> torch.Tensor:
    return factors.view(-1, 1, 1, 1)


# The colour operations work in place on `images (num_views, 3, height, width)` in [0, 1] (a batch's selected views
# are already a copy) and take one factor per view: torchvision's functionals take one factor per call.


def adjust_brightness_(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """`TF.adjust_brightness`, one factor per view, in place."""
    return images.mul_(_per_view(factors)).clamp_(0, 1)


def adjust_contrast_(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """`TF.adjust_contrast`, one factor per view, in place: `factor * image + (1 - factor) * mean grey`."""
    # The mean of the grayscale view is the grayscale of the mean colour (grayscale is linear): one reduction.
    mean = TF.rgb_to_grayscale(images.mean(dim=(-2, -1), keepdim=True))
    return images.lerp_(mean, 1 - _per_view(factors)).clamp_(0, 1)


def adjust_saturation_(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """`TF.adjust_saturation`, one factor per view, in place: `factor * image + (1 - factor) * grayscale`."""
    return images.lerp_(TF.rgb_to_grayscale(images), 1 - _per_view(factors)).clamp_(0, 1)


# The HSV -> RGB weights of the three channels as functions of the hue h in sixths of a turn, h in [0, 6):
# w = clamp(sign * |h - centre| + offset, 0, 1), i.e. red 2 - |h - 3|, green |h - 2| - 1, blue |h - 4| - 1.
_HUE_CENTRES, _HUE_SIGNS, _HUE_OFFSETS = (3.0, 2.0, 4.0), (-1.0, 1.0, 1.0), (2.0, -1.0, -1.0)


def adjust_hue_(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """`TF.adjust_hue`, one shift per view (in [-0.5, 0.5] turns), in place and in closed form.

    A hue shift keeps each pixel's maximum `v` and chroma `c = v - min`; each channel becomes `v - c * w(h)` with
    `h` the shifted hue (torchvision's, i.e. PIL's, RGB -> HSV hue, in sixths of a turn) and `w` the channel's
    HSV -> RGB weight (its distance on the hue circle from where the channel peaks, minus 1, clamped to [0, 1]).
    This is torchvision's RGB -> HSV -> RGB round trip without the HSV image, in about a third of the passes over
    the pixels. `torch.where` is avoided: on a CPU it measured several times slower than arithmetic, and selecting
    with 0/1 masks is exact here (each sum adds zeros to one term).
    """
    red, green, blue = images.unbind(dim=-3)
    high = torch.maximum(red, green)
    torch.maximum(high, blue, out=high)
    chroma = torch.minimum(red, green)
    torch.minimum(chroma, blue, out=chroma)
    torch.sub(high, chroma, out=chroma)
    # Which channel holds the maximum (red first, then green, as torchvision breaks ties), as exclusive 0/1 masks.
    red_max = (high == red).to(images.dtype)
    green_max = (high == green).to(images.dtype).mul_(1 - red_max)
    blue_max = 1 - red_max - green_max
    # The hue in sixths: (g - b) / c where red is the maximum, 2 + (b - r) / c where green is, 4 + (r - g) / c else.
    hue = red_max * (green - blue)
    hue.addcmul_(green_max, blue - red).addcmul_(blue_max, red - green)
    hue.div_(chroma + (chroma == 0))  # grey pixels (c = 0) get hue 0 and stay grey
    hue.add_(green_max, alpha=2).add_(blue_max, alpha=4).add_(6 * shifts.view(-1, 1, 1)).remainder_(6)
    centres, signs, offsets = (
        torch.tensor(values, device=images.device, dtype=images.dtype).view(3, 1, 1)
        for values in (_HUE_CENTRES, _HUE_SIGNS, _HUE_OFFSETS)
    )
    weights = (hue.unsqueeze(-3) - centres).abs_()
    weights = torch.addcmul(offsets, signs, weights, out=weights).clamp_(0, 1)
    return torch.addcmul(high.unsqueeze(-3), chroma.unsqueeze(-3), weights, value=-1, out=images)


def jitter_views_(views: torch.Tensor, factors: torch.Tensor, shift_hue: bool) -> torch.Tensor:
    """`v2.ColorJitter` in its fixed order, one set of factors per view, in place: brightness, contrast, saturation
    and, with `shift_hue`, hue.

    Args:
        views (`torch.FloatTensor` of shape `(num_views, 3, height, width)`): in [0, 1].
        factors (`torch.FloatTensor` of shape `(num_views, 4)`): brightness, contrast and saturation factors and
            the hue shift, as in the parameter vector.
        shift_hue: whether to apply the hue shifts (a shift of 0 is not an exact identity: it rounds).
    """
    adjust_brightness_(views, factors[:, 0])
    adjust_saturation_(adjust_contrast_(views, factors[:, 1]), factors[:, 2])
    return adjust_hue_(views, factors[:, 3]) if shift_hue else views


@functools.cache
def compiled_jitter():
    """`jitter_views_` under `torch.compile` (inductor), compiled on first use, once per process.

    The jitter is some 40 elementwise passes over the views (the hue shift most of them), each reading and writing
    every pixel in eager PyTorch; compiled, they fuse into a few kernels, which is what makes it cheap on a GPU (on
    a CPU core it measured about 2x faster). Shapes are dynamic, so that any number of views and any view size
    reuse a graph; `torch.compile` still makes one for a single view, one per `shift_hue` and, on a CPU, one for
    views above 64 x 64 pixels (inductor reduces those differently): a few graphs, each compiled once per process.
    """
    return torch.compile(jitter_views_, dynamic=True, fullgraph=True)


def _views_where(mask: torch.Tensor, device) -> torch.Tensor | None:
    """Indices (on `device`) of the views a CPU `mask` selects; `None` when it selects none."""
    indices = mask.nonzero()[:, 0]
    return indices.to(device, non_blocking=True) if indices.numel() else None


class BatchMultiViewAugmentation(ViewAugmentation):
    """`MultiViewAugmentation` for a whole uint8 batch at once, on the batch's device (module docstring).

    Args (besides `ViewAugmentation`'s `num_views`, `size`, `preset`, `image_mean`, `image_std`, `interpolation`,
    `**recipe`):
        canvas_size (`int` or `(height, width)`, *optional*): the canvas the workers decode to. Defaults to the view
            size, so that no crop is ever downscaled. With photos much larger than the views and strong crops (the
            `"simclr"` preset's 0.08 area) the smallest crops are then enlarged from fewer pixels than the original
            has; a canvas about twice the view size keeps more of their detail, at four times the bytes per image
            (crops larger than the view are then downscaled, antialiased).
        torch_compile (`bool`, defaults to `False`): run the colour jitter compiled (`compiled_jitter`; the trainer's
            `torch_compile`). The first batches pay for the compilation (seconds); meant for GPUs, and it needs a
            C++ compiler on a CPU.

    The calls a trainer makes:

    ```python
    views = BatchMultiViewAugmentation(num_views=config.num_views, size=image_size, preset=view_preset,
                                       image_mean=processor.image_mean, image_std=processor.image_std)
    decode = data.DecodeConfig(image_transform=views.canvas, ...)       # workers: decode to the canvas
    ...
    batch = next(batches)                                                 # in the step, main process
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels") if k in batch}
    inputs.update(views(batch, device=device))                            # pixel_values, augmentation_params
    loss = model(**inputs, return_loss=True).loss
    ```
    """

    def __init__(self, *args, canvas_size: int | Sequence[int] | None = None, torch_compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.torch_compile = bool(torch_compile)
        if self.interpolation not in RESAMPLING_FILTERS:
            raise ValueError(
                f"interpolation must be one of {[m.value for m in RESAMPLING_FILTERS]} for batched views, got "
                f"{self.interpolation}"
            )
        self.canvas = ImageCanvas(self.size if canvas_size is None else canvas_size, self.interpolation)

    def __repr__(self) -> str:
        compiled = ", torch_compile=True" if self.torch_compile else ""
        return f"{type(self).__name__}({self._arguments()}, canvas={self.canvas}{compiled})"

    def sample_params(self, image_sizes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws `num_views` parameter vectors per image of `image_sizes (batch_size, 2)` (original height, width):
        `(batch_size, num_views, P)`, on the CPU."""
        sizes = torch.as_tensor(image_sizes).cpu().reshape(-1, 2)
        params = sample_view_params(self.recipe, sizes.repeat_interleave(self.num_views, dim=0), generator)
        return params.view(sizes.shape[0], self.num_views, AUGMENTATION_PARAM_DIM)

    def render(self, images: torch.Tensor, resized_image_sizes: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Renders the views that `params` describe.

        Args:
            images (`torch.ByteTensor` of shape `(batch_size, 3, canvas_height, canvas_width)`): canvases
                (`ImageCanvas`), on the device to render on.
            resized_image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`): (height, width) of each image on
                its canvas.
            params (`torch.FloatTensor` of shape `(batch_size, num_views, P)`): the views' parameter vectors.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_views, 3, height, width)`: the normalised views.
        """
        self._check_inputs(images, resized_image_sizes, params)
        batch_size, num_views = params.shape[:2]
        views = torch.empty(batch_size, num_views, 3, *self.size, device=images.device)
        # On a CPU, chunks of images whose views fit the cache (temporaries stay there; about 1.5x faster at 64 px
        # than whole batches); on a GPU, the whole batch at once.
        pixels_per_image = num_views * self.size[0] * self.size[1]
        chunk = batch_size if images.device.type == "cuda" else max(1, CPU_CHUNK_PIXELS // pixels_per_image)
        for first in range(0, batch_size, chunk):
            window = slice(first, first + chunk)
            self._render_chunk(images[window], resized_image_sizes[window], params[window], views[window])
        return views

    def _render_chunk(
        self, images: torch.Tensor, resized_image_sizes: torch.Tensor, params: torch.Tensor, out: torch.Tensor
    ) -> None:
        """`render` for a few images, into `out (n, num_views, 3, height, width)`."""
        batch_size, num_views = params.shape[:2]
        device, (out_h, out_w), (canvas_h, canvas_w) = images.device, self.size, images.shape[-2:]
        flat = params.reshape(-1, AUGMENTATION_PARAM_DIM)
        on_device = flat.to(device, non_blocking=True)
        extents = resized_image_sizes.to(device, torch.float32).repeat_interleave(num_views, dim=0)
        left, top, crop_w, crop_h, flip = on_device[:, :5].unbind(dim=1)
        heights, widths = extents.unbind(dim=1)
        rows = resampling_matrices(top * heights, crop_h * heights, heights, out_h, canvas_h, self.interpolation)
        cols = resampling_matrices(
            left * widths, crop_w * widths, widths, out_w, canvas_w, self.interpolation, flip=flip > 0
        )
        # Rows first, every view of an image in one product: (n, V*H, Hc) @ (n, Hc, 3*Wc) -> (n*V, H*3, Wc); then
        # each view's columns: -> (n*V, H*3, W), written channels-first.
        pixels = images.permute(0, 2, 1, 3).contiguous().to(torch.float32).view(batch_size, canvas_h, 3 * canvas_w)
        down = (rows.view(batch_size, num_views * out_h, canvas_h) / 255) @ pixels
        across = down.view(-1, out_h * 3, canvas_w) @ cols.transpose(1, 2)
        views = out.view(-1, 3, out_h, out_w)
        # Clamped (cubic resampling overshoots) while copied channels-first.
        torch.clamp(across.view(-1, out_h, 3, out_w).permute(0, 2, 1, 3), 0, 1, out=views)
        self._colour_and_blur(views, flat, on_device)

    def _colour_and_blur(self, views: torch.Tensor, params: torch.Tensor, params_on_device: torch.Tensor) -> None:
        """Jitter, grayscale, blur and normalisation of `views (n, 3, height, width)`, in place; `params (n, P)`
        on the CPU decides which views need which operation."""
        device, (out_h, out_w) = views.device, views.shape[-2:]
        jitter = params[:, 5:9] != torch.tensor(IDENTITY_PARAMS[5:9])
        jittered = _views_where(jitter.any(dim=1), device)
        if jittered is not None:  # identity factors leave a view exactly as it is, except the hue shift's rounding
            factors, view = params_on_device[jittered], views[jittered]
            shifted = jitter[jitter.any(dim=1), 3]
            every_hue_shifted = bool(shifted.all())
            # A copy with standard strides (`contiguous()` keeps a single row's): the compiled graph guards on them.
            jitter_factors = factors[:, 5:9].clone(memory_format=torch.contiguous_format)
            (compiled_jitter() if self.torch_compile else jitter_views_)(view, jitter_factors, every_hue_shifted)
            if not every_hue_shifted and shifted.any():
                shifted = shifted.nonzero()[:, 0].to(device, non_blocking=True)
                view[shifted] = adjust_hue_(view[shifted], factors[shifted, 8])
            views[jittered] = view
        grey = _views_where(params[:, 9] > 0, device)
        if grey is not None:
            views[grey] = TF.rgb_to_grayscale(views[grey], num_output_channels=3)
        blurred = _views_where(params[:, 10] > 0, device)
        if blurred is not None:
            sigma = params_on_device[blurred, 10]
            blur_rows = gaussian_blur_matrices(sigma, self.blur_kernel_size, out_h)[:, None]
            blur_cols = gaussian_blur_matrices(sigma, self.blur_kernel_size, out_w)[:, None]
            views[blurred] = blur_rows @ views[blurred] @ blur_cols.transpose(-1, -2)
        if self.image_mean is not None:
            TF.normalize(views, self.image_mean, self.image_std, inplace=True)

    def __call__(self, batch: Mapping, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The views of a collated canvas batch (`ImageCanvas` fields, plus `augmentation_seed` from
        `data.TrainStream`), on `device` (default: where `batch["images"]` is).

        Returns:
            `{"pixel_values": (batch_size, num_views, 3, height, width) float32, "augmentation_params":
            (batch_size, num_views, P) float32}`, both on `device`. Without `augmentation_seed` the parameters come
            from torch's global generator.
        """
        missing = [name for name in CANVAS_FIELDS if name not in batch]
        if missing and batch.get("num_skipped") and "input_ids" not in batch:
            raise ValueError(
                f"this batch lost every sample to damaged data ({batch['num_skipped']} skipped: "
                f"{batch.get('skipped')}) and has no images: pass over it, as the trainer does with batches without "
                "input_ids"
            )
        if missing:
            raise KeyError(
                f"the batch has no {missing} (it has {sorted(batch)}): batched views need the DataLoader to decode "
                "with DecodeConfig(image_transform=views.canvas), so that workers yield uint8 canvases"
            )
        seed = batch.get("augmentation_seed")
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        params = self.sample_params(batch["image_sizes"], generator)
        images = batch["images"].to(device if device is not None else batch["images"].device, non_blocking=True)
        pixel_values = self.render(images, batch["resized_image_sizes"], params)
        return {"pixel_values": pixel_values, "augmentation_params": params.to(images.device, non_blocking=True)}

    def _check_inputs(self, images: torch.Tensor, resized_image_sizes: torch.Tensor, params: torch.Tensor) -> None:
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.ndim != 4
            or images.shape[1] != 3
        ):
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(
                f"images must be a uint8 tensor (batch_size, 3, height, width), got {got}: build it with "
                "views.canvas (ImageCanvas), which DataLoader workers run as the DecodeConfig image_transform"
            )
        batch_size = images.shape[0]
        if params.shape != (batch_size, self.num_views, AUGMENTATION_PARAM_DIM):
            raise ValueError(
                f"params must have shape ({batch_size}, {self.num_views}, {AUGMENTATION_PARAM_DIM}) for this batch, "
                f"got {tuple(params.shape)}"
            )
        if tuple(resized_image_sizes.shape) != (batch_size, 2):
            raise ValueError(
                f"resized_image_sizes must have shape ({batch_size}, 2), got {tuple(resized_image_sizes.shape)}"
            )


__all__ = [
    "CANVAS_FIELDS",
    "BatchMultiViewAugmentation",
    "ImageCanvas",
    "adjust_brightness_",
    "adjust_contrast_",
    "adjust_hue_",
    "adjust_saturation_",
    "compiled_jitter",
    "gaussian_blur_matrices",
    "jitter_views_",
    "resampling_matrices",
]
