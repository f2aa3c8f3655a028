"""Training zoo entries: data, losses, optimizers, schedulers, samplers, meters and the loop.

zoo train --arch bmshj2018-hyperprior --quality 3 --train DIR --val DIR --out RUN --steps 20000
torchrun --nproc-per-node 2 -m zoo.train --arch ... (DistributedDataParallel; gloo on CPU, NCCL on GPU)
zoo release RUN --version 1.0 --out ENTRY_DIR --eval KODAK_DIR
"""
