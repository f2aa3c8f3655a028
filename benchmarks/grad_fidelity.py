"""How far a reduced-precision training step's gradient is from float32's, on the same batch and noise.

    python benchmarks/grad_fidelity.py                        # the newest bmshj2018-hyperprior-vr entry
    python benchmarks/grad_fidelity.py --entry model_store/entries/mbt2018-mean-vr/mse/v1.3 --no-compile

One batch (8 crops of 256² from `samples/kodim23.png`, one at each level 1..8) through a variable-rate
entry's network in training mode, the quantisation noise drawn from the same seed each time. The loss's
gradient with float32 is the reference; each variant's gradient of the transforms (g_a, g_s: what the
distortion term trains) is compared with it: cosine (1 = same direction) and norm ratio (1 = same length).
Variants: bfloat16 autocast eager, and torch.compile'd, each with the float32 islands as the layers run now
(GDN's elementwise part and the convolutions that read and write pixels; GDN's channel mixing in bfloat16), with
all of GDN in float32 (the recipe of v1.3), and with every layer in bfloat16 (before v1.3).
Ends with one `variant=<name> cos=<c> norm_ratio=<r>` per variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def newest_entry(arch: str) -> Path:
    """The folder of the entry `zoo.load(arch, quality=...)` would use: the manifest's newest version."""
    from zoo.hub import resolve_point
    from zoo.mirror import entry_folder

    entry = resolve_point(arch, 1).entry
    assert entry.path, f"{entry.name} has no path in the manifest"
    return entry_folder(REPO / entry.path)


def main() -> int:
    import torch
    import torch._inductor.config as inductor_config

    from zoo.entry import load_entry
    from zoo.imageio import read_image
    from zoo.layers import GDN, PixelConv2d, PixelConvTranspose2d, float32_under_autocast
    from zoo.train.losses import RateDistortionLoss
    from zoo.train.trainer import level_lambdas

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entry", type=Path, help="a variable-rate entry folder (default: newest hyperprior-vr)")
    ap.add_argument("--image", type=Path, default=REPO / "samples" / "kodim23.png")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (minutes)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    inductor_config.fallback_random = True  # compiled code draws the same noise as eager code
    model, info = load_entry(args.entry or newest_entry("bmshj2018-hyperprior-vr"))
    if not hasattr(model, "y_gain"):
        raise SystemExit(f"{info.entry.arch} is not a variable-rate network")
    model = model.float().train().to(memory_format=torch.channels_last)
    img, _ = read_image(args.image)
    h, w = img.shape[-2:]
    if min(h, w) < 256:
        raise SystemExit(f"{args.image} is smaller than 256 px")
    corners = [(i * (h - 256), j * (w - 256) // 3) for i in (0, 1) for j in range(4)]
    x = torch.stack([img[:, a : a + 256, b : b + 256] for a, b in corners]).contiguous(
        memory_format=torch.channels_last
    )
    levels = torch.arange(1, 9, dtype=torch.float32)
    loss_fn = RateDistortionLoss(float("nan"), "mse")
    watched = [p for n, p in model.named_parameters() if n.startswith(("g_a.", "g_s."))]

    def gradient(net: torch.nn.Module, amp: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x, levels)
        loss_fn(out, x, level_lambdas(levels, "mse")).loss.backward()
        return torch.cat([p.grad.flatten().double() for p in watched])

    islands = (GDN, PixelConv2d, PixelConvTranspose2d)
    pixel_f32 = [cls.forward for cls in islands[1:]]
    pixel_bf16 = [cls.forward.__wrapped__ for cls in islands[1:]]  # type: ignore[attr-defined]
    variants = {
        "float32-islands": [GDN.forward, *pixel_f32],  # as the layers run now: GDN's mixing in bfloat16
        "gdn-all-float32": [float32_under_autocast(GDN._forward), *pixel_f32],  # v1.3's recipe
        "all-bfloat16": [GDN._forward, *pixel_bf16],  # before v1.3
    }
    float32_forwards = variants["float32-islands"]
    reference = gradient(model, amp=False)
    results = []
    for compiled in (False, True):
        if compiled and args.no_compile:
            continue
        for label, forwards in variants.items():
            for cls, forward in zip(islands, forwards, strict=True):
                cls.forward = forward  # type: ignore[method-assign]
            torch._dynamo.reset()
            net = torch.compile(model) if compiled else model
            g = gradient(net, amp=True)
            if compiled:
                g = gradient(net, amp=True)  # the first call compiles; the second is what training runs
            cos = torch.nn.functional.cosine_similarity(reference, g, dim=0).item()
            results.append(
                (f"bf16-{'compiled' if compiled else 'eager'}-{label}", cos, (g.norm() / reference.norm()).item())
            )
    for cls, forward in zip(islands, float32_forwards, strict=True):
        cls.forward = forward  # type: ignore[method-assign]
    print(
        f"{info.entry.arch} v{info.entry.version}: gradient of g_a and g_s against float32's, "
        "batch 8 x 256^2, levels 1..8"
    )
    for name, cos, ratio in results:
        print(f"variant={name} cos={cos:.4f} norm_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
