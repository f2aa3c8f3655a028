"""Training throughput: bmshj2018-hyperprior quality 3 (or --arch, e.g. a variable-rate one) at batch 8 x 256^2.

    python experiments/train_step.py [--steps 5] [--amp bf16] [--channels-last] [--compile] [--threads N]
    python experiments/train_step.py --arch bmshj2018-hyperprior-vr --threads 1                    # float32
    python experiments/train_step.py --arch bmshj2018-hyperprior-vr --threads 1 --amp bf16 --channels-last

Times full optimisation steps (forward, RD loss, backward, clipping, both optimizers) after one warm-up
step, on CUDA when available, else CPU. Ends with
`steps_per_s=<x> cpu_s_per_step=<y> device=<cpu|cuda> amp=<on|off> channels_last=<on|off> malloc=<libc|tcmalloc|..>`;
the CPU seconds (the process's own, all threads) are the cost that does not depend on how busy the machine is.
The allocator matters on the CPU: `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python ...`.
"""

from __future__ import annotations

import argparse
import time

import torch

from zoo.registry import create_model, get_arch
from zoo.train.losses import RateDistortionLoss
from zoo.train.malloc import malloc_library
from zoo.train.optim import build_optimizers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--amp", choices=["bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--arch", default="bmshj2018-hyperprior")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = get_arch(args.arch)
    model = create_model(args.arch, 1 if spec.variable_rate else 3).to(device).train()
    x = torch.rand(args.batch, 3, args.patch, args.patch, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if args.compile else model
    opt, aux_opt = build_optimizers(model, 1e-4)
    loss_fn = RateDistortionLoss(spec.lmbda(3))
    levels = torch.full((args.batch,), 3.0, device=device)  # variable-rate: every example at level 3

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            out = net(x, levels) if spec.variable_rate else net(x)
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
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.steps / (time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / args.steps
    print(
        f"{args.arch}{'' if spec.variable_rate else ' q3'}, batch {args.batch} x {args.patch}^2, "
        f"{torch.get_num_threads()} CPU threads{', compiled' if args.compile else ''}"
    )
    print(
        f"steps_per_s={rate:.3f} cpu_s_per_step={cpu:.2f} device={device.type} amp={'on' if args.amp else 'off'} "
        f"channels_last={'on' if args.channels_last else 'off'} malloc={malloc_library() or 'libc'}"
    )


if __name__ == "__main__":
    main()
