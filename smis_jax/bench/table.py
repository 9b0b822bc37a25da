"""The plain-text table of benchmark results (one line per JSON row)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["format_table"]

_RATE_KEYS = ("labels_per_s", "images_per_s", "steps_per_s")


def _fmt_bytes(n) -> str:
    return "-" if not n else f"{n / 2**30:.2f}G"


def _fmt_ratio(x) -> str:
    return "" if x is None else f"{x:.2f}x"


def _fmt_percent(x) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of results (one line per row)."""
    head = ["bench", "config", "mode", "dtype", "batch", "path", "median_s", "rate", "x_vs_torch", "x_vs_orig_jax", "x_vs_prev",
            "compile_s", "GFLOP/item", "GFLOP/s", "%peak", "peak_mem", "agree_torch", "agree_orig_jax", "agree_f32"]
    lines = [head]
    for r in rows:
        if r.get("path") == "skipped":
            lines.append([r["bench"], r["config"], str(r.get("mode", "-")), r["dtype"], str(r["batch"]), "skipped",
                          r["skipped"]])
            continue
        rate_key = next(k for k in _RATE_KEYS if k in r)
        unit = {"labels_per_s": "labels/s", "images_per_s": "img/s", "steps_per_s": "steps/s"}[rate_key]
        fpi, ach, frac = r.get("flops_per_item"), r.get("achieved_flops_per_s"), r.get("peak_fraction")
        mem = r.get("memory") or {}
        lines.append([
            r["bench"], r["config"], str(r.get("mode", "-")), r["dtype"], str(r["batch"]), r["path"],
            f"{r['time_s_median']:.3f}", f"{r[rate_key]:.3g} {unit}",
            _fmt_ratio(r.get("speedup_vs_original_torch")), _fmt_ratio(r.get("speedup_vs_original_jax")),
            _fmt_ratio(r.get("speedup_vs_previous")),
            f"{r['compile_s']:.1f}", "-" if fpi is None else f"{fpi / 1e9:.1f}",
            "-" if ach is None else f"{ach / 1e9:.1f}",
            f"{100 * frac:.1f}" if isinstance(frac, float) else str(frac), _fmt_bytes(mem.get("peak_bytes")),
            *(_fmt_percent(r.get(k)) for k in ("agree_with_original_torch", "agree_with_original_jax",
                                                "agree_with_float32")),
        ])
    widths = [max(len(row[i]) for row in lines if i < len(row)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)

