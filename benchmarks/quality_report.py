"""Quality reports derived from a run's JSON record: per-image CSV, markdown, plots, image grids.

The JSON record (see quality.py) is the source of truth; every function here reads
only it (grids also take the images, which the record does not hold), so reports can
be rebuilt from the JSON alone: `python -m diffpir_rt.benchmarks.quality_report results.json`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from diffpir_rt.engine import write_image, write_text

METRICS = ("psnr", "ssim", "lpips")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "fid": "FID"}
ABLATION_KEYS = ("sweep", "steps", "lam", "zeta")


def clean_number(value: Any) -> Optional[float]:
    """JSON-safe metric: non-finite (the PSNR of identical images) becomes None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean of every metric over the rows sharing `keys`, with the count n; first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in keys)].append(row)
    summary = []
    for group_key, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, group_key))
        entry["n"] = len(members)
        for metric in METRICS:
            values = [r[metric] for r in members if r.get(metric) is not None]
            if values:
                entry[metric] = float(np.mean(values))
        summary.append(entry)
    return summary


# ----------------------------------------------------------------------------- CSV


def per_image_csv(record: dict[str, Any]) -> str:
    rows = record["per_image"]
    columns = ["dataset", "image", "index", "task", "sigma_n", "method"]
    columns += [k for k in ABLATION_KEYS if any(k in r for r in rows)]
    columns += [m for m in METRICS if any(m in r for r in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buffer.getvalue()


# ----------------------------------------------------------------------------- markdown


def _fmt(value: Optional[float], metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric in ("psnr", "fid") else f"{value:.3f}"


def _header(record: dict[str, Any], title: str) -> list[str]:
    config = record["config"]
    model = config["model"]
    if model is None:
        model_text = "none (baselines only)"
    else:
        model_text = f"{model['source']} weights, arch `{model['arch']}`"
        model_text += f", `{model['path']}`" if model.get("path") else ""
        model_text += f", sha256 {model['sha256'][:16]}" if model.get("sha256") else ""
        model_text += f", seed {model['seed']}" if model.get("seed") is not None else ""
    datasets = ", ".join(f"{d['name']} ({len(d['images'])} images)" for d in record["datasets"])
    crop = config["crop"]
    dirty = " (uncommitted changes)" if config.get("git_dirty") else ""
    return [
        f"# {title}",
        "",
        f"- date: {config['date']}; git: {config['git_commit'] or 'unknown'}{dirty}",
        f"- model: {model_text}; device: {config['device']}",
        f"- data: {datasets}; {'centre crop ' + str(crop) + '²' if crop else 'full size'}, mod-cropped to 8",
        f"- seeds: run seed {config['seed']}; image i: kernel 10·i, mask i, noise and sampler seed + i (benchmarks/protocol.py)",
        f"- metrics: {config['metrics_note']}",
        "",
    ]


def _best_psnr(cells: dict[str, dict[str, Any]]) -> Optional[str]:
    scored = [(c["psnr"], m) for m, c in cells.items() if c.get("psnr") is not None]
    return max(scored)[1] if scored else None


def _table_markdown(record: dict[str, Any]) -> list[str]:
    methods = record["methods"]
    metrics = [m for m in METRICS if any(m in s for s in record["summary"])]
    cell_label = " / ".join(METRIC_LABELS[m] for m in metrics)
    lines: list[str] = []
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in record["summary"]:
        by_dataset[entry["dataset"]].append(entry)
    for dataset, entries in by_dataset.items():
        present = [m for m in methods if any(e["method"] == m for e in entries)]
        lines += [f"## {dataset}: mean {cell_label} (best PSNR in bold)", ""]
        lines.append("| task | σ_n | n | " + " | ".join(present) + " |")
        lines.append("|---|---|---|" + "---|" * len(present))
        rows: dict[tuple[str, float], dict[str, dict[str, Any]]] = defaultdict(dict)
        for e in entries:
            rows[(e["task"], e["sigma_n"])][e["method"]] = e
        for (task, sigma), cells in rows.items():
            n = max(c["n"] for c in cells.values())
            best = _best_psnr(cells)
            texts = []
            for method in present:
                cell = cells.get(method)
                text = "–" if cell is None else " / ".join(_fmt(cell.get(m), m) for m in metrics)
                texts.append(f"**{text}**" if method == best else text)
            lines.append(f"| {task} | {sigma:g} | {n} | " + " | ".join(texts) + " |")
        lines.append("")
    if record.get("fid"):
        lines += ["## FID (restored set vs ground-truth set)", "", "| dataset | task | σ_n | method | n | FID |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {f['dataset']} | {f['task']} | {f['sigma_n']:g} | {f['method']} | {f['n']} | {_fmt(f['fid'], 'fid')} |"
            for f in record["fid"]
        ]
        lines.append("")
    return lines


def _hyperparameter_lines(record: dict[str, Any]) -> list[str]:
    lines = [
        "## DiffPIR hyperparameters (also the datastep baseline's λ and steps)",
        "",
        "| task | σ_n | λ | ζ | steps | skip | defaults from |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in record["tasks"]:
        h = task["hyperparameters"]
        lines.append(
            f"| {task['label']} | {task['sigma_n']:g} | {h['lam']:g} | {h['zeta']:g} | {h['steps']} | {h['skip']} | {task['defaults_source']} |"
        )
    lines.append("")
    return lines


def _method_notes(record: dict[str, Any]) -> list[str]:
    notes = record["config"].get("baseline_notes", {})
    lines = ["## Methods", ""]
    lines += [f"- **{name}**: {text}" for name, text in notes.items() if name in record["methods"]]
    lines.append("")
    return lines


def _ablation_markdown(record: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for entry in record["ablation"]:
        groups[(entry["dataset"], entry["task"], entry["sigma_n"])].append(entry)
    for (dataset, task, sigma), entries in groups.items():
        lines += [f"## {dataset}: {task}, σ_n = {sigma:g}", ""]
        steps = [e for e in entries if e["sweep"] == "steps"]
        if steps:
            lines += ["| steps | λ | ζ | n | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
            lines += [
                f"| {e['steps']} | {e['lam']:g} | {e['zeta']:g} | {e['n']} | {_fmt(e.get('psnr'), 'psnr')} | {_fmt(e.get('ssim'), 'ssim')} |"
                for e in steps
            ]
            lines.append("")
        grid = [e for e in entries if e["sweep"] == "lam_zeta"]
        if grid:
            zetas = sorted({e["zeta"] for e in grid})
            lams = sorted({e["lam"] for e in grid})
            cell = {(e["lam"], e["zeta"]): e for e in grid}
            lines += [f"PSNR (dB) / SSIM at {grid[0]['steps']} steps; rows λ, columns ζ", ""]
            lines.append("| λ \\ ζ | " + " | ".join(f"{z:g}" for z in zetas) + " |")
            lines.append("|---|" + "---|" * len(zetas))
            for lam in lams:
                texts = []
                for z in zetas:
                    e = cell.get((lam, z))
                    texts.append("–" if e is None else f"{_fmt(e.get('psnr'), 'psnr')} / {_fmt(e.get('ssim'), 'ssim')}")
                lines.append(f"| {lam:g} | " + " | ".join(texts) + " |")
            lines.append("")
    return lines


def markdown(record: dict[str, Any]) -> str:
    if record["kind"] == "ablation":
        lines = _header(record, "DiffPIR-RT ablation: steps, λ × ζ") + _ablation_markdown(record)
    else:
        lines = _header(record, "DiffPIR-RT quality benchmark") + _table_markdown(record)
        lines += _hyperparameter_lines(record) + _method_notes(record)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- plots


def _write_figure(fig: Any, path: Path) -> Path:
    """Render a matplotlib figure to PNG and write it through write_image (atomic, like every output)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return write_image(path, torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))


def plot_ablation(record: dict[str, Any], path: Path) -> Optional[Path]:
    """PSNR against steps (one line per task) and a λ x ζ PSNR heat map per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    grids: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in record["ablation"]:
        name = f"{e['dataset']} {e['task']} σ={e['sigma_n']:g}"
        (series if e["sweep"] == "steps" else grids)[name].append(e)
    panels = (1 if series else 0) + len(grids)
    if panels == 0:
        return None
    fig, axes_grid = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
    axes = list(axes_grid[0])
    if series:
        ax = axes.pop(0)
        for name, points in series.items():
            points = sorted(points, key=lambda e: e["steps"])
            ax.plot([p["steps"] for p in points], [p.get("psnr") for p in points], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("steps N")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title("quality vs steps")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax, (name, points) in zip(axes, grids.items()):
        lams = sorted({p["lam"] for p in points})
        zetas = sorted({p["zeta"] for p in points})
        values = np.full((len(lams), len(zetas)), np.nan)
        for p in points:
            values[lams.index(p["lam"]), zetas.index(p["zeta"])] = np.nan if p.get("psnr") is None else p["psnr"]
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(zetas)), [f"{z:g}" for z in zetas])
        ax.set_yticks(range(len(lams)), [f"{lam:g}" for lam in lams])
        ax.set_xlabel("ζ")
        ax.set_ylabel("λ")
        ax.set_title(f"{name}\nPSNR (dB) at {points[0]['steps']} steps", fontsize=8)
        for i in range(len(lams)):
            for j in range(len(zetas)):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _write_figure(fig, path)


# ----------------------------------------------------------------------------- image grids


def _label_strip(labels: Sequence[str], cell_width: int, height: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (cell_width * len(labels), height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(labels):
        draw.text((i * cell_width + 3, 2), text, fill=(0, 0, 0))
    return np.asarray(strip, dtype=np.float64) / 255.0


def image_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], gap: int = 4) -> np.ndarray:
    """Tile (H, W, 3) [0, 1] images, one row per test image, under a strip of column labels."""
    cell_h = max(img.shape[0] for row in rows for img in row)
    cell_w = max(img.shape[1] for row in rows for img in row)
    grid = np.full((len(rows) * (cell_h + gap), len(labels) * (cell_w + gap), 3), 0.85)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            top, left = r * (cell_h + gap), c * (cell_w + gap)
            grid[top : top + img.shape[0], left : left + img.shape[1]] = np.clip(img, 0, 1)
    return np.concatenate([_label_strip(labels, cell_w + gap), grid], axis=0)


def write_grid(path: Path, rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str]) -> Path:
    grid = image_grid(rows, labels)
    return write_image(path, torch.from_numpy(np.ascontiguousarray(grid.transpose(2, 0, 1))))


# ----------------------------------------------------------------------------- all reports


def write_reports(record: dict[str, Any], out: Path) -> list[Path]:
    """per_image.csv, summary.md (ablation.md + ablation.png) from a record, into `out`."""
    ablation = record["kind"] == "ablation"
    written = [
        write_text(out / ("ablation_per_image.csv" if ablation else "per_image.csv"), per_image_csv(record)),
        write_text(out / ("ablation.md" if ablation else "summary.md"), markdown(record)),
    ]
    if ablation:
        plot = plot_ablation(record, out / "ablation.png")
        if plot is not None:
            written.append(plot)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Rebuild the reports of a results.json / ablation.json beside it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m diffpir_rt.benchmarks.quality_report RESULTS.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    for written in write_reports(json.loads(path.read_text()), path.parent):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
