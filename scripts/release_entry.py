"""Release a trained checkpoint as a zoo entry: fp16 or fp32 weights, tables from the shipped weights,
Kodak figures measured with real files, a model card, and a manifest line with sha256 of every file.

    python scripts/release_entry.py CKPT --arch A --quality Q --version V [--half] [--metric mse]
        [--training-json FILE] [--eval DIR]

CKPT is a torch checkpoint holding {"model": state_dict} (training runs) or a plain state dict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoo.entry import ENTRY_FILES, load_entry, save_entry, sha256_file  # noqa: E402
from zoo.hub import manifest_path  # noqa: E402
from zoo.registry import create_model, get_arch  # noqa: E402


def kodak_figures(entry_dir: Path, dataset: Path) -> dict[str, float]:
    import zoo
    from zoo.evaluation.runner import evaluate_codec  # type: ignore[import-not-found]

    result = evaluate_codec(zoo.load_local(entry_dir), dataset)
    return {
        "bpp": result.bpp,
        "psnr": result.psnr,
        "ms_ssim": result.ms_ssim,
        "images": result.images,
        "source": f"zoo eval --model {entry_dir.relative_to(REPO)} --dataset kodak",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--quality", type=int, required=True)
    ap.add_argument("--metric", default="mse")
    ap.add_argument("--version", required=True)
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--training-json", help="JSON file with the training summary for the model card")
    ap.add_argument("--eval", default=str(REPO.parent / "shared" / "datasets" / "kodak"))
    ap.add_argument("--org", default="zoo-codecs")
    args = ap.parse_args()

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt.get("state_dict", ckpt))
    model = create_model(args.arch, args.quality)
    model.load_state_dict(state)
    training = json.loads(Path(args.training_json).read_text()) if args.training_json else {}
    out = REPO / "model_store" / "entries" / args.arch / f"q{args.quality}-{args.metric}" / f"v{args.version}"
    info = save_entry(
        model,
        out,
        arch=args.arch,
        quality=args.quality,
        metric=args.metric,
        version=args.version,
        lmbda=get_arch(args.arch).lmbda(args.quality, args.metric),
        training=training,
        half=args.half,
    )
    kodak = kodak_figures(out, Path(args.eval)) if args.eval else {}
    if kodak:  # write again with the figures in config and card (weights and fingerprint unchanged)
        model, _ = load_entry(out)
        info = save_entry(
            model,
            out,
            arch=args.arch,
            quality=args.quality,
            metric=args.metric,
            version=args.version,
            lmbda=info.lmbda,
            training=training,
            half=args.half,
            eval_results={"kodak": kodak},
        )
    repo = f"{args.org}/{args.arch}-q{args.quality}-{args.metric}"
    line = {
        "arch": args.arch,
        "quality": args.quality,
        "metric": args.metric,
        "version": args.version,
        "repo": repo,
        "revision": f"v{args.version}",
        "files": {f: sha256_file(out / f) for f in ENTRY_FILES},
        "kodak": {k: v for k, v in kodak.items() if k in ("bpp", "psnr", "ms_ssim")},
        "path": str(out.relative_to(REPO)),
    }
    mpath = manifest_path()
    manifest = json.loads(mpath.read_text())
    manifest["entries"] = [
        e
        for e in manifest["entries"]
        if (e["arch"], e["quality"], e["metric"], e["version"]) != (args.arch, args.quality, args.metric, args.version)
    ] + [line]
    manifest["entries"].sort(key=lambda e: (e["arch"], e["metric"], e["quality"], e["version"]))
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"released {info.entry} -> {out.relative_to(REPO)}  kodak: {line['kodak']}")


if __name__ == "__main__":
    main()
