"""What the moving average of the weights is worth: a run checkpoint's raw weights against their average.

    python experiments/ema_gain.py runs/hp-vr            # last.pt of a run trained with --ema
    python experiments/ema_gain.py runs/hp-vr --checkpoint best.pt --levels 1,3,5,8

Both weight sets are validated exactly as the run validates (real bitstreams on its validation folder, at
each level's own λ: λ·255²·MSE + bpp), one after the other in this process. Ends with
`raw_loss=<x> ema_loss=<y> ratio=<y/x>` (mean over the levels; below 1: the average is better).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch

    from zoo.train.trainer import TrainConfig, Trainer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--levels", default="1,2,3,4,5,6,7,8", help="variable-rate levels to validate")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = torch.load(args.run / args.checkpoint, map_location="cpu", weights_only=True)
    if "raw" not in ckpt:
        print(f"{args.run / args.checkpoint} holds no moving average (train with --ema)", file=sys.stderr)
        return 2
    fields = set(TrainConfig.__dataclass_fields__)
    cfg = {k: v for k, v in json.loads((args.run / "config.json").read_text()).items() if k in fields}
    for key in ("init_parts", "val_levels"):
        cfg[key] = tuple(cfg.get(key) or ())
    cfg.update(resume=False, init=None, ema_decay=0.0, quiet=True, channels_last=False, amp=None)
    cfg["val_levels"] = tuple(float(v) for v in args.levels.split(","))
    trainer = Trainer(TrainConfig(**cfg))
    losses = {}
    for name, part in (("raw", "raw"), ("ema", "model")):
        trainer.model.load_state_dict(ckpt[part])
        result = trainer.validate()
        losses[name] = result["loss"]
        per_level = "  ".join(f"q{k:g} {v['loss']:.4f}" for k, v in sorted(trainer.last_levels.items()))
        print(f"{name:4s} step {ckpt['step']}: mean loss {result['loss']:.4f}  bpp {result['bpp']:.4f}  "
              f"PSNR {result['psnr']:.2f}  | {per_level}")  # fmt: skip
    print(f"raw_loss={losses['raw']:.4f} ema_loss={losses['ema']:.4f} ratio={losses['ema'] / losses['raw']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
