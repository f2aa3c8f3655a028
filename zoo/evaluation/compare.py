"""One image coded at the same byte budget by zoo entries and classical codecs, as a static HTML page.

The searches are `zoo.ratecontrol`'s (real file sizes, never over the budget); the figures are
`zoo.evaluation.metrics`'; the page, its PNG reconstructions and the coded files all go in one folder.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zoo.errors import InputError, ZooError
from zoo.evaluation.classical import get_classical
from zoo.evaluation.metrics import bpp, ms_ssim_rgb, psnr_rgb
from zoo.evaluation.runner import RDPoint

if TYPE_CHECKING:
    from zoo.codec import Codec

# Pillow's quality knob per classical codec: every integer in this range is a setting the search may pick.
# JPEG stops at 95, where Pillow says its quantisation tables stop paying for their size.
QUALITY_RANGE = {"jpeg": range(1, 96), "webp": range(0, 101), "avif": range(0, 101)}
CLASSICAL_DEFAULT = ("jpeg", "webp", "avif")


@dataclass(frozen=True)
class Contender:
    """One codec's answer to the budget: its file, its reconstruction, or why it has none."""

    name: str  # what the page calls it: "jpeg", or the entry's architecture
    setting: str  # the chosen knob, e.g. "quality 37" or "level 3.41"
    made_by: str  # the codec in full: the entry with its version, or "Pillow JPEG"
    suffix: str  # of the coded file: ".jpg", ".zoo", ...
    data: bytes = b""
    reconstruction: np.ndarray | None = None
    failure: str = ""  # set when nothing fits (or the codec is missing); then there is no file


def classical_at_size(name: str, rgb: np.ndarray, max_bytes: int) -> Contender:
    """Pillow's `name` codec at the largest quality whose file fits `max_bytes`."""
    from zoo.ratecontrol import largest_fitting

    suffix = {"jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}[name]
    try:
        codec = get_classical(name)
        fit = largest_fitting(lambda q: codec.encode(rgb, int(q)), max_bytes, choices=list(QUALITY_RANGE[name]))
    except ZooError as exc:
        return Contender(name, "", f"Pillow {name.upper()}", suffix, failure=str(exc))
    return Contender(
        name, f"quality {int(fit.setting)}", f"Pillow {name.upper()}", suffix, fit.data, codec.decode(fit.data)
    )


def learned_at_size(
    codec_at: Callable[[float], Codec], space: dict, x, max_bytes: int, *, effort: int = 0, seed: int = 0
) -> Contender:
    """A zoo entry at the largest quality (or level) whose file fits `max_bytes`, decoded from that file.
    `codec_at` and `space` as `zoo.ratecontrol.compress_to_size` takes them."""
    from zoo import bitstream
    from zoo.compressed import format_level
    from zoo.ratecontrol import compress_to_size

    probe = codec_at(space["low"] if "low" in space else space["choices"][0]).entry
    name, made_by = probe.arch, f"{probe.arch} {probe.metric} v{probe.version}"
    try:
        c, setting = compress_to_size(codec_at, x, max_bytes, effort=effort, seed=seed, **space)
    except ZooError as exc:
        return Contender(name, "", made_by, ".zoo", failure=str(exc))
    codec = codec_at(setting)
    data = bitstream.dumps(c)
    knob = f"level {setting:.2f}" if "low" in space else f"quality {format_level(setting)}"
    knob += f", effort {effort}" if effort else ""
    return Contender(name, knob, made_by, ".zoo", data, codec.decompress_uint8(bitstream.loads(data)))


def eval_series(paths: Sequence[str | Path]) -> dict[str, list[RDPoint]]:
    """RD curves from results JSON files (`zoo eval --json`, `zoo bench --json`: CompressAI's layout, one
    object or a list of them): label -> points."""
    series: dict[str, list[RDPoint]] = {}
    for path in paths:
        try:
            loaded = json.loads(Path(path).read_text())
            layouts = loaded if isinstance(loaded, list) else [loaded]
            for layout in layouts:
                r = layout["results"]
                n = len(r["bpp"])
                ssim = r.get("ms-ssim-rgb") or [math.nan] * n
                times = [0.0] * n
                series[str(layout.get("name") or Path(path).stem)] = [
                    RDPoint(str(layout.get("name")), float(q), float(b), float(p), float(s), t, t, 0)
                    for q, b, p, s, t in zip(r["quality"], r["bpp"], r["psnr-rgb"], ssim, times, strict=True)
                ]
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is not a results JSON (zoo eval --json): {exc!r}") from None
    return series


@dataclass(frozen=True)
class Panel:
    """What the page shows of one contender: its files in the output folder and their figures."""

    contender: Contender
    coded: str  # file names inside the output folder ("" for a failure)
    png: str
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float


def write_page(
    out: str | Path,
    image_name: str,
    reference: np.ndarray,
    contenders: Sequence[Contender],
    max_bytes: int,
    rd_series: dict[str, list[RDPoint]] | None = None,
) -> tuple[Path, list[Panel]]:
    """Write the page (index.html), the original and each reconstruction as PNG, and each coded file into
    `out`; return the page's path and what each panel shows."""
    from PIL import Image

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # an earlier page's files, which this page might not replace
        if _PAGE_FILE.fullmatch(old.name) and old.is_file():
            old.unlink()
    h, w = reference.shape[:2]
    _save_png(reference, folder / "original.png", Image)
    panels = []
    for i, c in enumerate(contenders, 1):
        stem = f"{i:02d}-{_slug(c.name)}"
        if c.failure or c.reconstruction is None:
            panels.append(Panel(c, "", "", 0, math.nan, math.nan, math.nan))
            continue
        (folder / f"{stem}{c.suffix}").write_bytes(c.data)
        _save_png(c.reconstruction, folder / f"{stem}.png", Image)
        panels.append(
            Panel(
                c,
                f"{stem}{c.suffix}",
                f"{stem}.png",
                len(c.data),
                bpp(len(c.data), h, w),
                psnr_rgb(reference, c.reconstruction),
                ms_ssim_rgb(reference, c.reconstruction),
            )
        )
    plot = ""
    if rd_series:
        from zoo.evaluation.plot import rd_plot

        rd_plot(rd_series, folder / "rd.png", title="rate–distortion (zoo eval results)")
        plot = "rd.png"
    page = folder / "index.html"
    page.write_text(_html(image_name, w, h, max_bytes, panels, plot, busiest_spot(reference)), encoding="utf-8")
    return page, panels


_PAGE_FILE = re.compile(r"index\.html|original\.png|rd\.png|\d\d-[a-z0-9.-]+\.(png|zoo|jpg|webp|avif)")


def busiest_spot(rgb: np.ndarray, cell: int = 48) -> tuple[float, float]:
    """Where the zoom window starts, as (x, y) fractions of the image: the centre of the cell with the most
    detail (the largest mean absolute difference between neighbouring pixels), where codecs differ most."""
    grey = rgb.astype(np.float32).mean(axis=2)
    detail = np.zeros_like(grey)
    detail[:, 1:] += np.abs(np.diff(grey, axis=1))
    detail[1:, :] += np.abs(np.diff(grey, axis=0))
    h, w = grey.shape
    rows, cols = max(1, h // cell), max(1, w // cell)
    ch, cw = h // rows, w // cols
    cells = detail[: rows * ch, : cols * cw].reshape(rows, ch, cols, cw).mean(axis=(1, 3))
    r, c = np.unravel_index(int(np.argmax(cells)), cells.shape)
    return (c + 0.5) * cw / w, (r + 0.5) * ch / h


def _save_png(rgb: np.ndarray, path: Path, image_module) -> None:
    buf = io.BytesIO()
    image_module.fromarray(rgb).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-") or "codec"


def _figure(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _panel_html(p: Panel) -> str:
    c = p.contender
    title = f"<b>{html.escape(c.name)}</b><br>{html.escape(c.setting)}"
    if not p.png:
        return (
            f'<figure class="panel failed" data-name="{html.escape(c.name)}">'
            f"<figcaption><b>{html.escape(c.name)}</b><br>no file within the budget<br>"
            f'<span class="by">{html.escape(c.made_by)}</span></figcaption>'
            f'<p class="why">{html.escape(c.failure)}</p></figure>'
        )
    attrs = {
        "data-name": c.name,
        "data-coded": p.coded,
        "data-png": p.png,
        "data-bytes": str(p.bytes),
        "data-bpp": f"{p.bpp:.4f}",
        "data-psnr": f"{p.psnr:.2f}",
        "data-ms-ssim": _figure(p.ms_ssim, 4),
    }
    attr_text = " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items())
    return (
        f'<figure class="panel" {attr_text}>'
        f'<figcaption>{title}<br><span class="by">{html.escape(c.made_by)}</span></figcaption>'
        f'<div class="view"><img src="{p.png}" alt="{html.escape(c.name)}"><div class="box"></div></div>'
        f'<div class="zoom" style="background-image:url(\'{p.png}\')"></div>'
        f'<table class="stats"><tr><th>bytes</th><th>bpp</th><th>PSNR</th><th>MS-SSIM</th></tr>'
        f'<tr><td class="bytes">{p.bytes}</td><td class="bpp">{p.bpp:.4f}</td>'
        f'<td class="psnr">{p.psnr:.2f} dB</td><td class="ms-ssim">{_figure(p.ms_ssim, 4)}</td></tr></table>'
        f'<a class="file" href="{p.coded}">{p.coded}</a></figure>'
    )


def _html(
    image_name: str, w: int, h: int, max_bytes: int, panels: Sequence[Panel], plot: str, start: tuple[float, float]
) -> str:
    original = (
        '<figure class="panel" data-name="original" data-png="original.png">'
        f'<figcaption><b>original</b><br>{w}×{h} pixels<br><span class="by">{html.escape(image_name)}</span>'
        "</figcaption>"
        '<div class="view"><img src="original.png" alt="original"><div class="box"></div></div>'
        '<div class="zoom" style="background-image:url(\'original.png\')"></div>'
        "</figure>"
    )
    body = "\n".join([original, *(_panel_html(p) for p in panels)])
    aside = (
        f'<aside><h2>Rate–distortion</h2><img class="rd" src="{plot}" alt="RD plot">'
        '<p class="caption">The curves of the results files given to --eval (their datasets\' means, not this image).'
        "</p></aside>"
        if plot
        else ""
    )
    title = f"{html.escape(image_name)} at {max_bytes} bytes"
    return _PAGE.format(
        title=title,
        budget=max_bytes,
        budget_bpp=f"{bpp(max_bytes, h, w):.4f}",
        width=w,
        height=h,
        cx=f"{start[0]:.4f}",
        cy=f"{start[1]:.4f}",
        panels=body,
        aside=aside,
    )


# The zoom script: a click or drag on any image moves one shared centre (in image fractions); every panel
# draws the same window from its own PNG, at the chosen magnification, pixels kept square and sharp.
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.note {{ color: #555; margin: 0 0 12px; }}
main {{ display: flex; gap: 16px; align-items: flex-start; }}
.panels {{ display: flex; flex-wrap: wrap; gap: 12px; flex: 1; }}
.panel {{ margin: 0; width: 260px; border: 1px solid #ccc; border-radius: 4px; padding: 6px; background: #fafafa; }}
.panel figcaption {{ height: 4.2em; overflow: hidden; line-height: 1.4em; }}
.by {{ color: #666; font-size: 12px; display: block; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.view {{ position: relative; cursor: crosshair; line-height: 0; margin: 4px 0; }}
.view img {{ width: 100%; display: block; user-select: none; -webkit-user-drag: none; }}
.box {{ position: absolute; border: 2px solid #fff; box-shadow: 0 0 0 1px #000, inset 0 0 0 1px #000;
        box-sizing: border-box; pointer-events: none; }}
.zoom {{ width: 260px; height: 180px; background-repeat: no-repeat; image-rendering: pixelated;
         border: 1px solid #999; box-sizing: border-box; }}
.stats {{ width: 100%; border-collapse: collapse; margin-top: 4px; font-variant-numeric: tabular-nums; }}
.stats th {{ font-weight: normal; color: #666; font-size: 12px; text-align: left; }}
.file {{ font-size: 12px; }}
.failed .why {{ color: #a00; }}
aside {{ width: 420px; flex: none; }}
.caption {{ color: #666; font-size: 12px; }}
aside h2 {{ font-size: 15px; margin: 0 0 6px; }}
.rd {{ width: 100%; border: 1px solid #ccc; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="note">{width}×{height} pixels; every file is at most {budget} bytes ({budget_bpp} bpp).
Click or drag on any image to move the zoom window on all of them.
Zoom <select id="zoom"><option>2</option><option selected>4</option><option>8</option></select>×</p>
<main><div class="panels">
{panels}
</div>
{aside}
</main>
<script>
(function () {{
  var W = {width}, H = {height}, cx = {cx}, cy = {cy};
  var zoomSelect = document.getElementById("zoom");
  // a view is shared by its address: #x=0.25,y=0.6 (fractions of the image)
  var shared = /x=([0-9.]+),y=([0-9.]+)/.exec(location.hash);
  if (shared) {{ cx = Math.min(1, Number(shared[1])); cy = Math.min(1, Number(shared[2])); }}
  function draw() {{
    var z = Number(zoomSelect.value);
    document.querySelectorAll(".panel").forEach(function (panel) {{
      var zoom = panel.querySelector(".zoom"), img = panel.querySelector(".view img");
      var box = panel.querySelector(".box");
      if (!zoom || !img) return;
      var zw = zoom.clientWidth, zh = zoom.clientHeight;
      var cw = Math.min(W, zw / z), ch = Math.min(H, zh / z);
      var left = Math.max(0, Math.min(W - cw, cx * W - cw / 2));
      var top = Math.max(0, Math.min(H - ch, cy * H - ch / 2));
      zoom.style.backgroundSize = (W * z) + "px " + (H * z) + "px";
      zoom.style.backgroundPosition = (-left * z) + "px " + (-top * z) + "px";
      var s = img.clientWidth / W;
      box.style.left = (left * s) + "px"; box.style.top = (top * s) + "px";
      box.style.width = (cw * s) + "px"; box.style.height = (ch * s) + "px";
    }});
  }}
  function moveTo(event) {{
    var r = event.currentTarget.getBoundingClientRect();
    cx = Math.max(0, Math.min(1, (event.clientX - r.left) / r.width));
    cy = Math.max(0, Math.min(1, (event.clientY - r.top) / r.height));
    history.replaceState(null, "", "#x=" + cx.toFixed(4) + ",y=" + cy.toFixed(4));
    draw();
  }}
  document.querySelectorAll(".view").forEach(function (view) {{
    view.addEventListener("pointerdown", function (e) {{ view.setPointerCapture(e.pointerId); moveTo(e); }});
    view.addEventListener("pointermove", function (e) {{ if (e.buttons) moveTo(e); }});
  }});
  zoomSelect.addEventListener("change", draw);
  window.addEventListener("resize", draw);
  window.addEventListener("load", draw);
  draw();
}})();
</script>
</body></html>
"""
