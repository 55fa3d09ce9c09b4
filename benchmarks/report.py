"""Markdown, target checks and plots derived from a latency JSON document (the JSON is the record; these are views of it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

#: The issue's targets at 256^2 RGB, ffhq_10m: (what, config, check).
TARGET_CENTRE = {"task": "deblur", "size": 256, "batch": 1, "steps": 20}
TARGET_BATCH = {"task": "deblur", "size": 256, "batch": 32, "steps": 20}
#: Our graph paths: "default" is the product's path, the CUDA-graph runtime on a CUDA device.
FAST_BACKENDS = ("default", "graph-fp16-cupy", "graph-fp16-cupy-compile", "graph-fp16-cupy-autotune", "graph-fp16-torch")


def _fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _fmt_list(values: Optional[list[float]]) -> str:
    return "–" if not values else " / ".join(f"{v:.2f}" for v in values)


def one_line(r: dict[str, Any]) -> str:
    return (
        f"[I] {r['backend']} {r['task']} {r['size']}px b{r['batch']} {r['steps']} steps: "
        f"{r['per_image_ms']['median']:.2f} ms/img (p90 {r['per_image_ms']['p90']:.2f}), "
        f"{r['images_per_s']:.1f} img/s, UNet {_fmt(100 * r['unet_share'] if r['unet_share'] is not None else None, '.1f', '%')}"
        + (f", {r['gflops']:.3g} GFLOP/s ({_fmt(100 * r['fraction_of_peak'] if r.get('fraction_of_peak') is not None else None, '.1f', '%')} "
           f"of the {r.get('precision')} peak)" if r.get("gflops") is not None else "")  # fmt: skip
    )


def _find(results: list[dict[str, Any]], backend: str, config: dict[str, Any]) -> Optional[dict[str, Any]]:
    for r in results:
        if r["backend"] == backend and all(r.get(k) == v for k, v in config.items()) and "error" not in r:
            return r
    return None


def targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU acceptance numbers, checked on the fastest of our graph paths."""
    results = document.get("results", [])
    if document.get("meta", {}).get("arch") != "ffhq_10m":
        return []
    rows = []
    centre = [r for b in FAST_BACKENDS if (r := _find(results, b, TARGET_CENTRE))]
    if centre:
        best = min(centre, key=lambda r: r["per_image_ms"]["median"])
        ms = best["per_image_ms"]["median"]
        other = 1 - best["unet_share"] if best["unet_share"] is not None else None
        rows += [
            {"target": "restoration <= 30 ms (256², b1, 20 steps)", "value": f"{ms:.2f} ms", "ok": ms <= 30, "backend": best["backend"]},
            {"target": ">= 10x PyTorch fp32 eager", "value": _fmt(best.get("speedup_vs_baseline"), ".1f", "x"),
             "ok": (best.get("speedup_vs_baseline") or 0) >= 10, "backend": best["backend"]},
            {"target": ">= 1.5x torch.compile fp16 + CUDA graph", "value": _fmt(best.get("speedup_vs_compile"), ".2f", "x"),
             "ok": (best.get("speedup_vs_compile") or 0) >= 1.5 if best.get("speedup_vs_compile") else None,
             "backend": best["backend"]},
            {"target": "non-UNet time <= 3%", "value": _fmt(100 * other if other is not None else None, ".1f", "%"),
             "ok": other is not None and other <= 0.03, "backend": best["backend"]},
        ]  # fmt: skip
    batch = [r for b in FAST_BACKENDS if (r := _find(results, b, TARGET_BATCH))]
    if batch:
        best = max(batch, key=lambda r: r["images_per_s"])
        rows.append({"target": "batch 32 >= 60 images/s", "value": f"{best['images_per_s']:.1f} img/s",
                     "ok": best["images_per_s"] >= 60, "backend": best["backend"]})  # fmt: skip
    return rows


def peak_text(meta: dict[str, Any]) -> str:
    """What the compute fractions are fractions of: a stated peak, or this machine's measured one."""
    if meta.get("peak_tflops"):
        return f"{meta['peak_tflops']:.0f} TFLOP/s ({meta.get('peak_note') or 'stated'})"
    peaks = meta.get("peaks") or {}
    if not peaks:
        return "– (no peak given or measured)"
    parts = []
    for threads, found in sorted(peaks.items(), key=lambda item: int(item[0])):
        rates = ", ".join(f"{p} {v['gflops']:.0f} GFLOP/s" for p, v in found["peak"].items())
        parts.append(f"{threads} thread(s): {rates}")
    return "this machine's peak of the arm's precision, measured in this run (" + "; ".join(parts) + ")"


def thread_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the thread-scaling rows: each arm against itself at its fewest threads."""
    rows = [r for r in results if "error" not in r and r.get("thread_scaling_base") and r.get("threads") != r["thread_scaling_base"]]
    if not rows:
        return []
    lines = ["", "## Threads", "", "| backend | task | size | threads | median ms/img | × itself at fewer threads | "
             "efficiency (× / thread ratio) | % peak |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        efficiency = r["thread_scaling"] / (r["threads"] / r["thread_scaling_base"])
        fraction = 100 * r["compute_fraction"] if r.get("compute_fraction") is not None else None
        lines.append(f"| {r['backend']} | {r['task']} | {r['size']} | {r['threads']} (vs {r['thread_scaling_base']}) | "
                     f"{r['per_image_ms']['median']:.2f} | {r['thread_scaling']:.2f} | {efficiency:.2f} | {_fmt(fraction, '.1f')} |")  # fmt: skip
    return lines


def markdown(document: dict[str, Any]) -> str:
    meta, results = document.get("meta", {}), document.get("results", [])
    get = meta.get
    args = get("args") or {}
    unit = "TFLOP/s" if str(get("device", "")).startswith("cuda") else "GFLOP/s"
    device = get("device_name") or get("cpu") or get("device")
    lines = [
        f"# DiffPIR latency: {get('arch')} on {device}",
        "",
        f"- date {get('date_utc')}, commit {get('git_commit')}, torch {get('torch')}, CUDA {get('cuda', '–')}, "
        f"cuDNN {get('cudnn', '–')}, CuPy {get('cupy')}, Python {get('python')}",
        f"- load average (1/5/15 min) at start {_fmt_list(get('load_average'))}, at end {_fmt_list(get('load_average_at_end'))}",
        f"- torch threads {get('torch_threads')}"
        + (f", cuDNN benchmark {get('cudnn_benchmark')}, cuDNN TF32 {get('cudnn_allow_tf32')}, matmul TF32 "
           f"{get('matmul_allow_tf32')}" if get("cuda") else ""),  # fmt: skip
        f"- baseline `{get('baseline')}` (the fp32 eager reference loop); speedups are baseline/candidate per image, same run",
        f"- compute fraction against {peak_text(meta)}; FLOPs counted once per UNet call (torch.utils.flop_counter); "
        "FLOP/s over the whole restoration, and over the UNet's own time (UNet % peak)",
        f"- {args.get('warmup')} warm-up + {args.get('repeats')} timed restorations per row, "
        f"{'arms interleaved per round' if args.get('order', 'sequential') == 'interleaved' else 'arm by arm'}; "
        "UNet share from a separate profiling pass",
        "",
        f"| backend | task | size | batch | steps | threads | median ms/img | p90 ms/img | img/s | UNet % | peak MiB | "
        f"× baseline | × compile | {unit} | % peak | UNet % peak | PSNR vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = f"| {r['backend']} | {r['task']} | {r['size']} | {r['batch']} | {r['steps']} | {_fmt(r.get('threads'), 'd')} |"
        if "error" in r:
            lines.append(f"{head} {r['error'][:80]} |" + " |" * 10)
            continue
        share = 100 * r["unet_share"] if r.get("unet_share") is not None else None
        fraction = 100 * r["compute_fraction"] if r.get("compute_fraction") is not None else None
        unet_fraction = 100 * r["unet_fraction_of_peak"] if r.get("unet_fraction_of_peak") is not None else None
        psnr = "identical" if r.get("output_identical_to_baseline") else _fmt(r.get("psnr_vs_baseline_db"), ".1f", " dB")
        rate = r["tflops"] * (1 if unit == "TFLOP/s" else 1e3)
        lines.append(
            f"{head} {r['per_image_ms']['median']:.2f} | {r['per_image_ms']['p90']:.2f} | {r['images_per_s']:.1f} | "
            f"{_fmt(share, '.1f')} | {_fmt(r.get('peak_mem_mb'), '.0f')} | {_fmt(r.get('speedup_vs_baseline'), '.2f')} | "
            f"{_fmt(r.get('speedup_vs_compile'), '.2f')} | {rate:.3g} | {_fmt(fraction, '.1f')} | {_fmt(unet_fraction, '.1f')} | {psnr} |"
        )
    lines += thread_table(results)
    lines += size_table(results)
    from .peak import markdown_lines

    lines += markdown_lines({int(k): v for k, v in (get("peaks") or {}).items()})
    checks = targets(document)
    if checks:
        lines += ["", "## Targets", "", "| target | value | met | backend |", "|---|---|---|---|"]
        for c in checks:
            met = "–" if c["ok"] is None else ("yes" if c["ok"] else "NO")
            lines.append(f"| {c['target']} | {c['value']} | {met} | {c['backend']} |")
    return "\n".join(lines) + "\n"


def size_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the size sweep (when the results hold more than one size): time per
    megapixel against the 512² row's of the same backend/task/batch/steps, peak memory, tiling."""
    rows = [r for r in results if "error" not in r and r.get("megapixels")]
    if len({str(r["size"]) for r in rows}) < 2:
        return []
    lines = [
        "",
        "## Sizes",
        "",
        "Peak memory: on CUDA torch's peak allocation; on CPU the process's peak resident set during the "
        "timed runs (everything: weights, ONNX Runtime's arena, torch tensors) and, in brackets, its rise "
        "over the resident set before them.",
        "",
        "| backend | task | size | MP | median s/img | s/MP | s/MP ÷ 512²'s | peak MiB | tiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = [q for q in rows if (q["backend"], q["task"], q["batch"], q["steps"]) == (r["backend"], r["task"], r["batch"], r["steps"])]
        ref = next((q for q in same if q["size"] == 512), None)
        ratio = r["s_per_megapixel"] / ref["s_per_megapixel"] if ref else None
        if r.get("peak_mem_mb") is not None:
            memory = f"{r['peak_mem_mb']:.0f}"
        elif r.get("peak_rss_mb") is not None:
            memory = f"{r['peak_rss_mb']:.0f} (+{_fmt(r.get('peak_rss_delta_mb'), '.0f')})"
        else:
            memory = "–"
        tiling = r.get("tiling") or {}
        if tiling.get("used"):
            tiles = f"{tiling['tiles']} tiles of {tiling['tile'][0]}x{tiling['tile'][1]}, overlap {tiling['overlap']}"
        else:
            tiles = "whole image" + (f" ({tiling['mode']})" if tiling.get("mode") else "")
        lines.append(
            f"| {r['backend']} | {r['task']} | {r['size']} | {r['megapixels']:.2f} | {r['per_image_ms']['median'] / 1e3:.2f} | "
            f"{r['s_per_megapixel']:.2f} | {_fmt(ratio, '.2f')} | {memory} | {tiles} |"
        )
    return lines


def plot(document: dict[str, Any], path: Path) -> Optional[Path]:
    """Latency vs steps per backend, and throughput vs batch, at the centre configuration."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'diffpir-rt[bench]'): no plot")
        return None
    results = [r for r in document["results"] if "error" not in r]
    if not results:
        return None
    centre = results[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in results):
        mine = [r for r in results if r["backend"] == backend]
        by_steps = sorted((r["steps"], r["per_image_ms"]["median"]) for r in mine
                          if (r["task"], r["size"], r["batch"]) == (centre["task"], centre["size"], centre["batch"]))  # fmt: skip
        by_batch = sorted((r["batch"], r["images_per_s"]) for r in mine
                          if (r["task"], r["size"], r["steps"]) == (centre["task"], centre["size"], centre["steps"]))  # fmt: skip
        if by_steps:
            left.plot(*zip(*by_steps), marker="o", label=backend)
        if by_batch:
            right.plot(*zip(*by_batch), marker="o", label=backend)
    left.set(xlabel="steps", ylabel="ms per image (median)", yscale="log",
             title=f"latency: {centre['task']} {centre['size']}², batch {centre['batch']}")  # fmt: skip
    right.set(xlabel="batch", ylabel="images / s", xscale="log", title=f"throughput: {centre['steps']} steps")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    meta = document.get("meta", {})
    fig.suptitle(f"{meta.get('arch')} on {meta.get('device_name') or meta.get('device')} ({meta.get('date_utc')})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
