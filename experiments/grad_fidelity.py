"""How far a reduced-precision training step's gradient is from float32's, on the same batch and noise.

    python experiments/grad_fidelity.py                        # the newest bmshj2018-hyperprior-vr entry
    python experiments/grad_fidelity.py --entry model_store/entries/mbt2018-mean-vr/mse/v1.3 --no-compile

One batch (8 crops of 256² from `samples/kodim23.png`, one at each level 1..8) through a variable-rate
entry's network in training mode, the quantisation noise drawn from the same seed each time. The loss's
gradient with float32 is the reference; each variant's gradient of the transforms (g_a, g_s: what the
distortion term trains) is compared with it: cosine (1 = same direction) and norm ratio (1 = same length).
Variants: bfloat16 autocast eager, and torch.compile'd, each with the float32 islands as the layers run now
(GDN's elementwise part and the convolutions that read and write pixels; GDN's channel mixing in bfloat16), with
all of GDN in float32 (the recipe of v1.3), and with every layer in bfloat16 (before v1.3).
Two float32 rows give the scale against which to read those: the same crops with another draw of the
quantisation noise, and 8 other crops of the same image. They are the noise stochastic training already
lives with from one step to the next; bfloat16's rounding matters where its error is not far smaller.
Last, whether the islands' error is a bias or noise: over `--draws` noise draws, the mean cosine of their
errors with each other, and how close the draws' mean gradient comes to float32's.
Ends with one `variant=<name> cos=<c> norm_ratio=<r>` per variant and `error_bias=<b> averaged_cos=<c>`.
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
    ap.add_argument("--draws", type=int, default=4, help="noise draws for the bias measurement (at least 2)")
    args = ap.parse_args()
    if args.draws < 2:
        raise SystemExit("--draws must be at least 2")
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

    def crops(shift: int) -> torch.Tensor:
        """8 crops of 256², at the corners moved `shift` pixels inwards (those at the right edge leftwards)."""
        moved = [
            (a + shift if a == 0 else a - shift, b + shift if b + shift <= w - 256 else b - shift) for a, b in corners
        ]
        return torch.stack([img[:, a : a + 256, b : b + 256] for a, b in moved]).contiguous(
            memory_format=torch.channels_last
        )

    x = crops(0)
    other_x = crops(min(64, (h - 256) // 2))
    levels = torch.arange(1, 9, dtype=torch.float32)
    loss_fn = RateDistortionLoss(float("nan"), "mse")
    watched = [p for n, p in model.named_parameters() if n.startswith(("g_a.", "g_s."))]

    def gradient(net: torch.nn.Module, amp: bool, seed: int = 0, batch: torch.Tensor | None = None) -> torch.Tensor:
        batch = x if batch is None else batch
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(batch, levels)
        loss_fn(out, batch, level_lambdas(levels, "mse")).loss.backward()
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
    for label, g in (
        ("float32-other-noise", gradient(model, amp=False, seed=1)),
        ("float32-other-crops", gradient(model, amp=False, batch=other_x)),
    ):
        cos = torch.nn.functional.cosine_similarity(reference, g, dim=0).item()
        results.append((label, cos, (g.norm() / reference.norm()).item()))
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
    # is the islands' error a bias (the same on every draw: it adds up over steps) or noise (it averages out)?
    torch._dynamo.reset()
    seeds = range(args.draws)
    exact = [reference, *(gradient(model, amp=False, seed=s) for s in seeds[1:])]
    errors = [gradient(model, amp=True, seed=s) - e for s, e in zip(seeds, exact, strict=True)]
    pairs = [(i, j) for i in seeds for j in seeds if i < j]
    bias = sum(torch.nn.functional.cosine_similarity(errors[i], errors[j], dim=0).item() for i, j in pairs) / len(pairs)
    mean_exact = torch.stack(exact).mean(0)
    averaged = torch.nn.functional.cosine_similarity(mean_exact, mean_exact + torch.stack(errors).mean(0), dim=0)
    print(
        f"{info.entry.arch} v{info.entry.version}: gradient of g_a and g_s against float32's, "
        "batch 8 x 256^2, levels 1..8"
    )
    for name, cos, ratio in results:
        print(f"variant={name} cos={cos:.4f} norm_ratio={ratio:.3f}")
    print(
        f"float32 islands, eager, over {args.draws} noise draws: their errors' mean cosine with each other "
        f"{bias:.4f} (0: noise that averages out over steps, 1: a bias that adds up); "
        f"cosine of the {args.draws} draws' mean gradient with float32's mean {averaged.item():.4f}"
    )
    print(f"error_bias={bias:.4f} averaged_cos={averaged.item():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
