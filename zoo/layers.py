"""Building blocks of the analysis/synthesis transforms, with CompressAI's parameter and buffer names.

Names matter: a CompressAI state dict must load into these modules with strict=True.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reuse_buffers() -> bool:
    """True in plain eager inference, where a layer may compute into its own temporaries rather than allocate
    new ones: the values are the same, and at Kodak sizes each new 75 MB tensor costs tens of milliseconds of
    page faults (they took about a sixth of cheng2020's synthesis time). Off when autograd, tracing or export
    could see the in-place ops."""
    return not (
        torch.is_grad_enabled()
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def float32_under_autocast(forward):
    """Run a module's forward in float32 even inside a bfloat16 autocast region (the CPU and GPU training
    recipes), its floating inputs upcast. Two kinds of layer need it. Entropy models: a likelihood is the
    difference of two nearby CDF values, which bfloat16's 8-bit mantissa cannot resolve, so the rate term and
    its gradients would be mostly rounding noise. GDN (and the pixel convolutions below): in bfloat16 the
    transforms' gradient points elsewhere (on hyperprior-vr v1.2, cosine 0.565 with float32's; GDN alone in
    float32, 0.83; with the pixel convolutions too, 0.991: `experiments/grad_fidelity.py`). The convolutions
    between them keep bfloat16, and so does GDN's channel mixing (`GDN._forward_mixed`)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        first = next(a for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        device = first.device.type
        if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
            return forward(self, *args, **kwargs)

        def up(v):
            return v.float() if isinstance(v, Tensor) and v.is_floating_point() else v

        with torch.autocast(device, enabled=False):
            return forward(self, *(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper


class _LowerBoundFn(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it pushes x back up towards the bound."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through.type(grad_output.dtype) * grad_output, None


class LowerBound(nn.Module):
    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or not torch.is_grad_enabled():
            return torch.max(x, self.bound)
        return _LowerBoundFn.apply(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """Keeps a parameter non-negative by storing sqrt(value + pedestal) and squaring it back."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        pedestal = reparam_offset**2
        self.pedestal_value = pedestal
        self.register_buffer("pedestal", torch.tensor([pedestal]))
        self.lower_bound = LowerBound((minimum + pedestal) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


def _recording() -> bool:
    """Whether autograd, tracing or compilation records this call (training, export): then the convolution
    form is kept, as CompressAI writes it."""
    return torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al.): y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2).

    `inverse=True` multiplies instead (IGDN, used in synthesis transforms).
    """

    def __init__(self, in_channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = bool(inverse)
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()

        # Initial values computed on the CPU and filled in: no arithmetic on the parameters themselves, so a
        # model built on the meta device (to check an entry's shapes before allocating) stays cheap.
        def initial(value: float, reparam: NonNegativeParametrizer) -> float:
            x = torch.tensor([value], device="cpu")
            pedestal = torch.tensor([reparam.pedestal_value], device="cpu")  # as the buffer, whatever its device
            return float(torch.sqrt(torch.max(x + pedestal, pedestal)))

        beta = initial(1.0, self.beta_reparam)
        gamma_diag, gamma_off = initial(gamma_init, self.gamma_reparam), initial(0.0, self.gamma_reparam)
        self.beta = nn.Parameter(torch.full((in_channels,), beta))
        self.gamma = nn.Parameter(torch.full((in_channels, in_channels), gamma_off).fill_diagonal_(gamma_diag))

    def effective_params(self) -> tuple[Tensor, Tensor]:
        """beta and gamma as the layer uses them (what an export folds into constants)."""
        c = self.gamma.shape[0]
        return self.beta_reparam(self.beta), self.gamma_reparam(self.gamma).reshape(c, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            return self._forward_mixed(x)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        beta, gamma = self.effective_params()
        if self.inverse and x.dim() == 4 and not _recording():
            # Decoding: the channel mix as one matrix product. On the CPU, oneDNN's 1x1 convolution splits its
            # sums by thread, so decoded pixels differed by one level between 1 and 2 threads; the product's
            # sums do not depend on the thread count, at the same cost (benchmarks/thread_determinism.py).
            n, c, h, w = x.shape
            norm = torch.matmul(gamma.reshape(c, c), (x * x).reshape(n, c, h * w)).add_(beta.view(c, 1))
            norm = norm.view(n, c, h, w)
        else:
            norm = F.conv2d(x * x, gamma, beta)
        if reuse_buffers():  # the same values, in norm's memory (a product commutes bit for bit)
            return (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(x)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))

    def _forward_mixed(self, x: Tensor) -> Tensor:
        """Under autocast (training): the channel mixing sum_j gamma_ij x_j^2 in bfloat16 (float32 accumulation),
        everything elementwise in float32. The elementwise part is what bfloat16 got wrong: near saturation the
        two paths of x_i's own gradient nearly cancel, so their rounding errors dominate what is left (every
        layer in bfloat16: cosine 0.913 with float32's gradient on hyperprior-vr v1.3; elementwise float32 with
        the mixing in bfloat16: 0.998, the same as all of GDN in float32, for 20 % less CPU per compiled
        training step: `experiments/grad_fidelity.py`, `experiments/train_step.py`)."""
        device = x.device.type
        with torch.autocast(device, enabled=False):
            x = x.float()
            squares = x * x
            beta, gamma = self.effective_params()
        mixed = F.conv2d(squares, gamma)  # autocast's precision for convolutions
        with torch.autocast(device, enabled=False):
            # a sum of non-negative terms, but a convolution algorithm that is not a plain sum of products
            # (Winograd, FFT: cuDNN may choose one) can return it slightly negative, and a near-zero beta then
            # leaves a negative norm whose root is NaN
            norm = mixed.float().clamp_min(0) + beta.reshape(1, -1, 1, 1)
            return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


class MaskedConv2d(nn.Conv2d):
    """Causal convolution for autoregressive context models. Mask "A" hides the centre, "B" keeps it."""

    mask: Tensor

    def __init__(self, *args, mask_type: str = "A", **kwargs):
        super().__init__(*args, **kwargs)
        if mask_type not in ("A", "B"):
            raise ValueError(f'mask_type must be "A" or "B", not {mask_type!r}')
        weight = self.weight  # ones of its shape (not ones_like, which is slow on the meta device)
        self.register_buffer("mask", torch.ones(weight.shape, dtype=weight.dtype, device=weight.device))
        _, _, h, w = self.mask.shape
        self.mask[:, :, h // 2, w // 2 + (mask_type == "B") :] = 0
        self.mask[:, :, h // 2 + 1 :] = 0

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


def conv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        in_ch, out_ch, kernel_size, stride=stride, output_padding=stride - 1, padding=kernel_size // 2
    )


class PixelConv2d(nn.Conv2d):
    """The convolution that reads the image: float32 under autocast. In bfloat16 the pixels themselves are
    rounded (k/255 is not representable with an 8-bit mantissa), which moved this layer's output by 1.4% and
    its weights' gradient with it; it is a small share of the transform's arithmetic."""

    @float32_under_autocast
    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input)


class PixelConvTranspose2d(nn.ConvTranspose2d):
    """The convolution that writes the image: float32 under autocast. A bfloat16 reconstruction is rounded to
    steps of 1/256 in [0.5, 1), as large as the residual error of a high-rate model, so the distortion's
    gradient (the residual) would be largely rounding noise (`experiments/grad_fidelity.py`)."""

    @float32_under_autocast
    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        return super().forward(input, output_size)


def pixel_conv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> PixelConv2d:
    return PixelConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def pixel_deconv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> PixelConvTranspose2d:
    return PixelConvTranspose2d(
        in_ch, out_ch, kernel_size, stride=stride, output_padding=stride - 1, padding=kernel_size // 2
    )


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride)


def pixel_shuffle(x: Tensor, r: int) -> Tensor:
    """F.pixel_shuffle as one strided copy, which reads x plane by plane: a third faster on large tensors."""
    n, c, h, w = x.shape
    out = x.new_empty((n, c // (r * r), h, r, w, r))
    out.copy_(x.view(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3))
    return out.view(n, c // (r * r), h * r, w * r)


def subpel_conv3x3(in_ch: int, out_ch: int, r: int = 1) -> nn.Sequential:
    """3x3 convolution followed by pixel shuffle: upsampling by r without checkerboard artefacts."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch * r**2, 3, padding=1), nn.PixelShuffle(r))


class ResidualBlockWithStride(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 2):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride=stride)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.gdn = GDN(out_ch)
        self.skip = conv1x1(in_ch, out_ch, stride=stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.gdn(self.conv2(self.leaky_relu(self.conv1(x))))
        identity = self.skip(x) if self.skip is not None else x
        return out.add_(identity) if reuse_buffers() else out + identity


class ResidualBlockUpsample(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, upsample: int = 2):
        super().__init__()
        self.subpel_conv = subpel_conv3x3(in_ch, out_ch, upsample)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv = conv3x3(out_ch, out_ch)
        self.igdn = GDN(out_ch, inverse=True)
        self.upsample = subpel_conv3x3(in_ch, out_ch, upsample)

    def forward(self, x: Tensor) -> Tensor:
        if reuse_buffers():
            return self._forward_fused(x)
        out = self.igdn(self.conv(self.leaky_relu(self.subpel_conv(x))))
        return out + self.upsample(x)

    def _forward_fused(self, x: Tensor) -> Tensor:
        """`forward` with both subpixel convolutions of x as one convolution (their output channels side by
        side: the same values, one pass over x) and one pixel shuffle, in inference."""
        (a, shuffle), b = self.subpel_conv, self.upsample[0]
        assert isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d) and isinstance(shuffle, nn.PixelShuffle)
        assert a.bias is not None and b.bias is not None
        both = F.conv2d(x, torch.cat((a.weight, b.weight)), torch.cat((a.bias, b.bias)), a.stride, a.padding)
        both = pixel_shuffle(both, shuffle.upscale_factor)
        half = both.shape[1] // 2
        out = self.igdn(self.conv(self.leaky_relu(both[:, :half])))
        return out.add_(both[:, half:])


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.skip = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        identity = self.skip(x) if self.skip is not None else x
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))
        return out.add_(identity) if reuse_buffers() else out + identity


class _ResidualUnit(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(
            conv1x1(n, n // 2),
            nn.ReLU(inplace=True),
            conv3x3(n // 2, n // 2),
            nn.ReLU(inplace=True),
            conv1x1(n // 2, n),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x) + x)


class AttentionBlock(nn.Module):
    """Simplified attention of Cheng et al. 2020: a residual trunk gated by a sigmoid mask branch."""

    def __init__(self, n: int):
        super().__init__()
        self.conv_a = nn.Sequential(_ResidualUnit(n), _ResidualUnit(n), _ResidualUnit(n))
        self.conv_b = nn.Sequential(_ResidualUnit(n), _ResidualUnit(n), _ResidualUnit(n), conv1x1(n, n))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_a(x) * torch.sigmoid(self.conv_b(x))
