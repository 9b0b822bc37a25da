"""Looking at results: colourised label maps, [-1, 1] images as uint8, side-by-side grids, PNG writing.

The first 19 colours are CelebAMask-HQ's (as pSp's ``utils/common.py: get_colors``); classes beyond them get
fixed pseudo-random colours (seeded, so a class keeps its colour across runs and class counts).

Charts (curves, bars) are drawn with matplotlib's Agg renderer (no display, no pyplot state): describe each panel
with :class:`Line` or :class:`Bars` and render one or several with :func:`charts`; :func:`line_chart` and
:func:`bar_chart` are the one-panel shortcuts. Every chart comes back as a uint8 (H, W, 3) image for
:func:`save_png`.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["CELEBAMASK_COLORS", "palette", "colorize", "to_uint8", "grid", "titled_grid", "class_legend", "save_png",
           "Line", "Bars", "charts", "line_chart", "bar_chart"]

CELEBAMASK_COLORS = np.array([
    [0, 0, 0], [204, 0, 0], [76, 153, 0], [204, 204, 0], [51, 51, 255], [204, 0, 204], [0, 255, 255],
    [255, 204, 204], [102, 51, 0], [255, 0, 0], [102, 204, 0], [255, 255, 0], [0, 0, 153], [0, 0, 204],
    [255, 51, 153], [0, 204, 204], [0, 51, 0], [255, 153, 51], [0, 204, 0],
], dtype=np.uint8)

_MAX_CLASSES = 256  # labels are uint8
_PALETTE = np.concatenate([
    CELEBAMASK_COLORS,
    np.random.default_rng(0).integers(0, 256, (_MAX_CLASSES - len(CELEBAMASK_COLORS), 3), dtype=np.uint8),
])


def palette(n_classes: int = _MAX_CLASSES) -> np.ndarray:
    """(n_classes, 3) uint8 colours: CelebAMask-HQ's 19, then fixed pseudo-random ones."""
    if not 1 <= n_classes <= _MAX_CLASSES:
        raise ValueError(f"n_classes must be in 1..{_MAX_CLASSES}, got {n_classes}")
    return _PALETTE[:n_classes].copy()


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids (..., H, W) -> uint8 RGB (..., H, W, 3). For a one-hot/score map (..., H, W, C), argmax it first."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"colorize takes integer class ids, got dtype {labels.dtype} (argmax a one-hot map first)")
    if labels.size and (labels.min() < 0 or labels.max() >= _MAX_CLASSES):
        raise ValueError(f"class ids must be in 0..{_MAX_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    return _PALETTE[labels]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Image in [-1, 1] (..., H, W, 3) float -> uint8, as pSp's ``tensor2im``: clip((x+1)/2, 0, 1) * 255, truncated."""
    x = (np.asarray(image, np.float32) + 1.0) / 2.0
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]] | Sequence[np.ndarray], pad: int = 0, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (H, W, 3): a list of rows (each a list of images) or one row; rows are left-aligned.

    ``pad`` pixels of ``fill`` go between images. Images in a row must share their height.
    """
    if len(rows) and isinstance(rows[0], np.ndarray) and rows[0].ndim == 3:
        rows = [rows]
    rendered = []
    for r, row in enumerate(rows):
        if not len(row):
            raise ValueError(f"grid row {r} is empty")
        heights = {im.shape[0] for im in row}
        if len(heights) != 1:
            raise ValueError(f"grid row {r}: images of different heights {sorted(heights)}")
        parts = []
        for im in row:
            im = np.asarray(im)
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"grid takes uint8 (H, W, 3) images, got {im.dtype} {im.shape}")
            if parts and pad:
                parts.append(np.full((im.shape[0], pad, 3), fill, np.uint8))
            parts.append(im)
        rendered.append(np.concatenate(parts, axis=1))
    width = max(r.shape[1] for r in rendered)
    out = []
    for i, r in enumerate(rendered):
        if i and pad:
            out.append(np.full((pad, width, 3), fill, np.uint8))
        if r.shape[1] < width:
            r = np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), fill, np.uint8)], axis=1)
        out.append(r)
    return np.concatenate(out, axis=0)


TITLE_HEIGHT = 16  # the title strip above a titled grid: the bitmap font's 11 px line, centred
_LEGEND_LINE = 16  # one legend line: a 10 px swatch and the class name
_INK = (0, 0, 0)


def _font():
    """PIL's built-in bitmap font (no font file is read or downloaded)."""
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


def class_legend(n_classes: int, names: Sequence[str] = ()) -> list[tuple[str, tuple[int, int, int]]]:
    """``[(name, colour), ...]`` for class ids 0..n_classes-1 in :func:`colorize`'s colours; ``names`` (a domain's
    ``class_names``) when given, else "class i"."""
    colours = palette(n_classes)
    if names and len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    return [(f"{i} {names[i]}" if names else f"class {i}", tuple(int(v) for v in colours[i])) for i in range(n_classes)]


def _legend_strip(entries: Sequence[tuple[str, Sequence[int]]], width: int, fill: int) -> np.ndarray:
    """Swatch + name per entry, left to right, wrapped at ``width``: a uint8 (lines * 16, width, 3) strip."""
    from PIL import Image, ImageDraw

    font = _font()
    boxes, x, y = [], 4, 0
    for name, _ in entries:
        w = 14 + int(font.getlength(name))
        if x > 4 and x + w > width - 4:
            x, y = 4, y + _LEGEND_LINE
        boxes.append((x, y))
        x += w + 12
    img = Image.new("RGB", (width, y + _LEGEND_LINE), (fill,) * 3)
    draw = ImageDraw.Draw(img)
    for (name, colour), (x, y) in zip(entries, boxes):
        draw.rectangle([x, y + 3, x + 9, y + 12], fill=tuple(colour), outline=(128, 128, 128))
        draw.text((x + 14, y + 2), name, fill=_INK, font=font)
    return np.asarray(img)


def titled_grid(rows: Sequence[Sequence[np.ndarray]] | Sequence[np.ndarray], titles: Sequence[str], pad: int = 0,
                fill: int = 255, legend: Sequence[tuple[str, Sequence[int]]] = ()) -> np.ndarray:
    """:func:`grid` with a title above each column (the first row's images set the columns) and, with ``legend``
    (see :func:`class_legend`), colour swatches and class names below. The grid's pixels are unchanged: they sit at
    rows ``TITLE_HEIGHT : TITLE_HEIGHT + grid height``."""
    from PIL import Image, ImageDraw

    body = grid(rows, pad=pad, fill=fill)
    first = rows if len(rows) and isinstance(rows[0], np.ndarray) and rows[0].ndim == 3 else rows[0]
    if len(titles) > len(first):
        raise ValueError(f"{len(titles)} titles for {len(first)} columns")
    width = body.shape[1]
    head = Image.new("RGB", (width, TITLE_HEIGHT), (fill,) * 3)
    draw, font = ImageDraw.Draw(head), _font()
    x = 0
    for title, im in zip(titles, first):
        w = im.shape[1]
        draw.text((x + max((w - font.getlength(title)) // 2, 0), 2), title, fill=_INK, font=font)
        x += w + pad
    parts = [np.asarray(head), body]
    if legend:
        parts.append(_legend_strip(legend, width, fill))
    return np.concatenate(parts, axis=0)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) or (H, W) image as PNG, creating parent folders."""
    from PIL import Image

    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"save_png takes uint8 images, got {image.dtype} (use to_uint8)")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


# --- charts (matplotlib, Agg) -----------------------------------------------------------------------------------

PANEL_SIZE = (5.2, 3.6)  # inches per panel; at DPI a panel is 520 x 360 px: two side by side fit a README at 1:1
DPI = 100
_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
          "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
          "axes.spines.top": False, "axes.spines.right": False}
Number = float | int


@dataclass(frozen=True)
class Line:
    """A panel of curves. ``series`` maps a legend name to its points ``[(x, y), ...]`` (points with a non-finite
    y are left out; an empty series is not drawn). ``markers``: None marks the points of series with at most 12
    of them (an evaluation every few hundred steps), True/False always/never. ``colors``: optional RGB (0-255) per
    series name (e.g. :func:`palette`'s class colours)."""

    series: Mapping[str, Sequence[tuple[Number, Number]]]
    title: str = ""
    xlabel: str = "step"
    ylabel: str = ""
    logy: bool = False
    markers: bool | None = None
    ylim: tuple[Number | None, Number | None] | None = None  # an end None: the data's, with a 15% margin
    colors: Mapping[str, Sequence[int]] | None = None


@dataclass(frozen=True)
class Bars:
    """A panel of grouped bars. ``rows`` maps a category (an x tick: a class, a variant of an ablation) to
    ``{series name: value}`` (a series is a colour in the legend; a category may lack some series). A value may
    be a sequence, one per seed: the bar is then their mean, the whisker spans their min..max and a dot marks each
    seed (the legend says so). ``values``: print each bar's (mean) value above it. The legend goes to the right of
    the axes: give a panel of many bars a wide ``panel_size`` (:func:`charts`)."""

    rows: Mapping[str, Mapping[str, Number | Sequence[Number]]]
    title: str = ""
    ylabel: str = ""
    xlabel: str = ""
    ylim: tuple[Number | None, Number | None] | None = None
    values: bool = False
    colors: Mapping[str, Sequence[int]] | None = None


def _rgb(colors, name):
    c = (colors or {}).get(name)
    return None if c is None else tuple(float(v) / 255.0 for v in c)


def _draw_line(ax, panel: Line) -> None:
    drawn = 0
    for name, points in panel.series.items():
        pts = [(float(x), float(y)) for x, y in points if np.isfinite(float(y))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        marker = "o" if (panel.markers if panel.markers is not None else len(pts) <= 12) else None
        ax.plot(xs, ys, label=name, marker=marker, markersize=4, linewidth=1.6, color=_rgb(panel.colors, name))
        drawn += 1
    if panel.logy:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        sci = ax.yaxis.get_minor_formatter()  # decides which minor ticks get a label; ours writes 0.3, not 3x10^-1
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, pos: f"{v:g}" if sci(v, pos) else ""))
    if panel.ylim is not None:
        bottom, top = panel.ylim
        if top is None and drawn:  # a fixed bottom (0 for an IoU): the top with a margin above the data
            highest = max(float(y) for pts in panel.series.values() for _, y in pts if np.isfinite(float(y)))
            top = highest + 0.15 * (highest - (bottom if bottom is not None else 0.0)) or None
        ax.set_ylim(bottom, top)
    if drawn:
        ax.legend(loc="best", ncols=2 if drawn > 5 else 1, framealpha=0.8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")


def _draw_bars(ax, panel: Bars) -> None:
    categories = list(panel.rows)
    names: list[str] = []
    for row in panel.rows.values():
        names += [n for n in row if n not in names]
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(categories), dtype=np.float64)
    spread = False
    for i, name in enumerate(names):
        pos, means, lows, highs, seeds = [], [], [], [], []
        for j, cat in enumerate(categories):
            if name not in panel.rows[cat]:
                continue
            v = np.atleast_1d(np.asarray(panel.rows[cat][name], np.float64))
            pos.append(x[j] + (i - (len(names) - 1) / 2) * width)
            means.append(v.mean())
            lows.append(max(v.mean() - v.min(), 0.0))  # >= 0 despite rounding
            highs.append(max(v.max() - v.mean(), 0.0))
            seeds.append(v if v.size > 1 else None)
        if not pos:
            continue
        bars = ax.bar(pos, means, width * 0.92, label=name, color=_rgb(panel.colors, name))
        if any(s is not None for s in seeds):
            spread = True
            ax.errorbar(pos, means, yerr=[lows, highs], fmt="none", ecolor="0.15", capsize=2, linewidth=1)
            for p, s in zip(pos, seeds):
                if s is not None:
                    ax.plot(np.full(s.shape, p), s, "o", color="0.15", markersize=2.5, zorder=3)
        if panel.values:
            ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=8, padding=1)
    long_names = max((len(c) for c in categories), default=0) > 7
    ax.set_xticks(x, categories, rotation=30 if long_names else 0, ha="right" if long_names else "center")
    ax.grid(axis="x", visible=False)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    handles, labels = ax.get_legend_handles_labels()
    if spread:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.15", marker="o", markersize=3, linewidth=1))
        labels.append("seeds (min..max)")
    if len(handles) > 1:  # beside the axes, never over a bar
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def charts(panels: Sequence[Line | Bars], cols: int | None = None, title: str = "",
           panel_size: tuple[float, float] = PANEL_SIZE, dpi: int = DPI) -> np.ndarray:
    """Render panels (:class:`Line`, :class:`Bars`) on a grid of ``cols`` columns (default: up to 2) as one uint8
    (H, W, 3) image of exactly ``rows * panel_size[1] * dpi`` by ``cols * panel_size[0] * dpi`` pixels, white
    background, axes labelled, a legend per panel."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("charts needs at least one panel")
    cols = min(len(panels), 2) if cols is None else cols
    rows = -(-len(panels) // cols)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(cols * panel_size[0], rows * panel_size[1]), dpi=dpi, layout="constrained",
                     facecolor="white")
        canvas = FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, panel in zip(axes, panels):
            if isinstance(panel, Line):
                _draw_line(ax, panel)
            elif isinstance(panel, Bars):
                _draw_bars(ax, panel)
            else:
                raise TypeError(f"charts takes Line or Bars panels, got {type(panel).__name__}")
            ax.set_title(panel.title)
            ax.set_xlabel(panel.xlabel)
            ax.set_ylabel(panel.ylabel)
        for ax in axes[len(panels):]:
            ax.remove()
        if title:
            fig.suptitle(title)
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return image


def line_chart(series: Mapping[str, Sequence[tuple[Number, Number]]], *, title: str = "", xlabel: str = "step",
               ylabel: str = "", logy: bool = False, **kw) -> np.ndarray:
    """One panel of curves (see :class:`Line`) as a uint8 image; ``kw``: :func:`charts`' ``panel_size``/``dpi``.

    ``viz.save_png("loss.png", viz.line_chart({"loss": [(10, 0.7), (20, 0.6)]}, ylabel="W+ MSE"))``"""
    return charts([Line(series, title, xlabel, ylabel, logy)], **kw)


def bar_chart(rows: Mapping[str, Mapping[str, Number | Sequence[Number]]], *, title: str = "", ylabel: str = "",
              xlabel: str = "", ylim=None, values: bool = False, **kw) -> np.ndarray:
    """One panel of grouped bars (see :class:`Bars`; a sequence of values is a seed spread) as a uint8 image;
    ``kw``: :func:`charts`' ``panel_size``/``dpi``. For a table of ablation variants x measures::

        viz.bar_chart({"baseline": {"mIoU": [0.29, 0.31, 0.30]}, "refined": {"mIoU": [0.33, 0.34, 0.32]}},
                      ylabel="mIoU (0-1)", values=True)"""
    return charts([Bars(rows, title, ylabel, xlabel, ylim, values)], **kw)
