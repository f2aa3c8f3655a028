"""Training throughput: bmshj2018-hyperprior quality 3 at batch 8 x 256^2.

    python benchmarks/train_step.py [--steps 5] [--amp bf16] [--compile] [--threads N]

Times full optimisation steps (forward, RD loss, backward, clipping, both optimizers) after one warm-up
step, on CUDA when available, else CPU. Ends with `steps_per_s=<x> device=<cpu|cuda> amp=<on|off>`.
"""

from __future__ import annotations

import argparse
import time

import torch

from zoo.registry import create_model, get_arch
from zoo.train.losses import RateDistortionLoss
from zoo.train.optim import build_optimizers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--amp", choices=["bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model("bmshj2018-hyperprior", 3).to(device).train()
    net = torch.compile(model) if args.compile else model
    opt, aux_opt = build_optimizers(model, 1e-4)
    loss_fn = RateDistortionLoss(get_arch("bmshj2018-hyperprior").lmbda(3))
    x = torch.rand(args.batch, 3, args.patch, args.patch, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            out = net(x)
        terms = loss_fn(out, x)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.main_parameters(), 1.0)
        opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.steps / (time.perf_counter() - t0)
    print(
        f"bmshj2018-hyperprior q3, batch {args.batch} x {args.patch}^2, {torch.get_num_threads()} CPU threads"
        f"{', compiled' if args.compile else ''}"
    )
    print(f"steps_per_s={rate:.3f} device={device.type} amp={'on' if args.amp else 'off'}")


if __name__ == "__main__":
    main()
