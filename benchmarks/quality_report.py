"""Quality reports derived from a run's JSON record: per-image CSV, markdown, plots, image grids.

The JSON record (see quality.py) is the source of truth; every function here reads
only it (grids also take the images, which the record does not hold), so reports can
be rebuilt from the JSON alone: `python -m diffpir_rt.benchmarks.quality_report results.json`.
"""

from __future__ import annotations

from diffpir_rt.lazy import lazy_module

import csv
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from diffpir_rt.engine import write_image, write_text

torch = lazy_module("torch")

METRICS = ("psnr", "ssim", "lpips")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "fid": "FID"}
#: Averaged per group besides the metrics.
MEANS = (*METRICS, "seconds")
ABLATION_KEYS = ("sweep", "steps", "lam", "zeta")
SCHEMA_PREFIX = "diffpir-rt.quality/"
SCHEMA_VERSION = 2


def clean_number(value: Any) -> Optional[float]:
    """JSON-safe metric: non-finite (the PSNR of identical images) becomes None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean of every metric (and seconds) over the rows sharing `keys`, with the count n; first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in keys)].append(row)
    summary = []
    for group_key, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, group_key))
        entry["n"] = len(members)
        for metric in MEANS:
            values = [r[metric] for r in members if r.get(metric) is not None]
            if values:
                entry[metric] = float(np.mean(values))
        summary.append(entry)
    return summary


# ----------------------------------------------------------------------------- CSV


def per_image_csv(record: dict[str, Any]) -> str:
    rows = record["per_image"]
    columns = ["dataset", "image", "index", "task", "scenario", "sigma_n", "method"]
    columns += [k for k in ABLATION_KEYS if any(k in r for r in rows)]
    columns += [m for m in MEANS if any(m in r for r in rows)]
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
    if metric == "seconds":
        return f"{value:.1f}" if value >= 1 else f"{value:.2f}"
    return f"{value:.2f}" if metric in ("psnr", "fid") else f"{value:.3f}"


def _header(record: dict[str, Any], title: str) -> list[str]:
    config = record["config"]
    model = config["model"]
    if model is None:
        model_text = "none (classical baselines only)"
    else:
        model_text = f"{model['kind']} weights `{model['label']}`, arch `{model['arch']}`"
        model_text += f", sha256 {model['sha256'][:16]}" if model.get("sha256") else ""
    datasets = ", ".join(f"{d['name']} ({len(d['images'])} images: {', '.join(d['images'][:6])}{', ...' if len(d['images']) > 6 else ''})"
                         for d in record["datasets"])  # fmt: skip
    crop = config["crop"]
    dirty = " (uncommitted changes)" if config.get("git_dirty") else ""
    machine = config.get("machine", {})
    versions = config.get("versions", {})
    version_text = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("diffpir_rt", "torch", "onnxruntime", "python"))
    lines = [
        f"# {title}",
        "",
        f"- date: {config['date']}; git: {config['git_commit'] or 'unknown'}{dirty}",
        f"- model: {model_text}",
        f"- machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} logical CPUs, {machine.get('torch_threads', '?')} torch "
        f"thread(s), device {config['device']}{', ' + machine['gpu'] if machine.get('gpu') else ''}; {version_text}",
    ]
    runtime = config.get("runtime")
    if runtime:
        path = runtime.get("path_after") or runtime["path"]
        lines.append(f"- runtime: the `Restorer` path **{path['name']}** ({path['backend']}, {path['precision']}): {path['reason']}")
        for line in [*path.get("fallbacks", []), *runtime.get("notices", [])]:
            lines.append(f"  - {line}")
    lines += [
        f"- data: {datasets}; {'centre crop ' + str(crop) + '²' if crop else 'full size'}, mod-cropped to 8",
        f"- seeds: run seed {config['seed']}; image i: kernel 10·i, mask i, noise and sampler seed + i (benchmarks/protocol.py)",
        f"- metrics: {config['metrics_note']}",
    ]
    if config.get("timing_note"):
        lines.append(f"- timing: {config['timing_note']}")
    if machine.get("load_average_start"):
        load = f"- load average (1/5/15 min) at start {', '.join(f'{v:g}' for v in machine['load_average_start'])}"
        if machine.get("load_average_end"):
            load += f", at end {', '.join(f'{v:g}' for v in machine['load_average_end'])}"
        lines.append(load)
    return lines + [""]


def _nfe_text(info: dict[str, Any], keys: Sequence[str]) -> str:
    nfe = info.get("nfe")
    if not isinstance(nfe, dict) or not nfe:
        return "–"
    values: list[int] = []
    for key in keys:
        if key in nfe and nfe[key] not in values:
            values.append(nfe[key])
    return ", ".join(str(v) for v in values)


def _best(cells: dict[str, dict[str, Any]], metric: str) -> Optional[str]:
    scored = [(c[metric], m) for m, c in cells.items() if c.get(metric) is not None]
    if not scored:
        return None
    return min(scored)[1] if metric == "lpips" else max(scored)[1]


def _table_markdown(record: dict[str, Any]) -> list[str]:
    """The DiffPIR paper's Table 1 layout: one row per method with its NFE, PSNR / SSIM per
    scenario, then seconds per image; one table per dataset."""
    methods = record["methods"]
    info = record.get("method_info", {})
    metrics = [m for m in METRICS if any(m in s for s in record["summary"])]
    task_keys = [t["key"] for t in record["tasks"]]
    lines: list[str] = []
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in record["summary"]:
        by_dataset[entry["dataset"]].append(entry)
    for dataset, entries in by_dataset.items():
        cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # key -> method -> entry
        for e in entries:
            cells[f"{e['scenario']}@{e['sigma_n']:g}"][e["method"]] = e
        keys = [k for k in task_keys if k in cells]
        present = [m for m in methods if any(m in cells[k] for k in keys)]
        n = max(e["n"] for e in entries)
        lines += [f"## {dataset}: mean over {n} image{'s' if n != 1 else ''} (best per column in bold)", ""]
        head = ["method", "NFE"]
        for key in keys:
            head += [f"{key} {METRIC_LABELS[m]}" for m in metrics]
        head.append("s / image")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * (len(keys) * len(metrics) + 1))
        best = {(k, m): _best(cells[k], m) for k in keys for m in metrics}
        for method in present:
            row = [method, _nfe_text(info.get(method, {}), keys)]
            seconds = []
            for key in keys:
                cell = cells[key].get(method)
                for metric in metrics:
                    text = "–" if cell is None else _fmt(cell.get(metric), metric)
                    row.append(f"**{text}**" if cell is not None and best[(key, metric)] == method else text)
                if cell is not None and cell.get("seconds") is not None:
                    seconds.append((cell["seconds"], cell["n"]))
            total = sum(s * c for s, c in seconds)
            count = sum(c for _, c in seconds)
            row.append(_fmt(total / count, "seconds") if count else "–")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "– : the method does not apply to the task (see Notes). NFE: UNet calls per image "
                  "(one value per task where they differ, in column order). s / image: mean wall time per image "
                  "over the tasks it ran.", ""]  # fmt: skip
        lines += _seconds_table(present, keys, cells, info)
    if record.get("fid"):
        lines += ["## FID (restored set vs ground-truth set)", "", "| dataset | task | σ_n | method | n | FID |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {f['dataset']} | {f['scenario']} | {f['sigma_n']:g} | {f['method']} | {f['n']} | {_fmt(f['fid'], 'fid')} |"
            for f in record["fid"]
        ]
        lines.append("")
    return lines


def _seconds_table(methods: Sequence[str], keys: Sequence[str], cells: dict[str, dict[str, dict[str, Any]]],
                   info: dict[str, Any]) -> list[str]:  # fmt: skip
    lines = ["Seconds per image (NFE) by task:", "", "| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for method in methods:
        nfe = info.get(method, {}).get("nfe")
        row = [method]
        for key in keys:
            cell = cells[key].get(method)
            if cell is None or cell.get("seconds") is None:
                row.append("–")
                continue
            calls = nfe.get(key) if isinstance(nfe, dict) else None
            row.append(_fmt(cell["seconds"], "seconds") + (f" ({calls})" if calls else ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _params_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in config.items() if k != "method")


def _configuration_lines(record: dict[str, Any]) -> list[str]:
    """Every family method's config per task: what ran, field by field."""
    info = record.get("method_info", {})
    family = [m for m in record["methods"] if isinstance(info.get(m, {}).get("configs"), dict)]
    if not family:
        return []
    lines = ["## Configurations (what ran)", "", "| method | task | NFE | parameters | runs on |", "|---|---|---:|---|---|"]
    for method in family:
        entry = info[method]
        for key, config in entry["configs"].items():
            lines.append(f"| {method} | {key} | {entry['nfe'][key]} | {_params_text(config)} | {entry.get('runs_on', '')} |")
    return lines + [""]


def _notes_lines(record: dict[str, Any]) -> list[str]:
    lines = ["## Notes", ""]
    deviations = record.get("deviations", [])
    if deviations:
        lines += ["Deviations from the official settings (everything else at the defaults `diffpir restore --method M` uses):", ""]
        lines += [f"- {d}" for d in deviations]
        lines.append("")
    skipped = record.get("skipped", [])
    if skipped:
        lines += ["Skipped (the method does not apply to the task):", ""]
        seen: dict[tuple[str, str], list[str]] = defaultdict(list)
        for s in skipped:
            seen[(s["method"], s["reason"])].append(s["key"])
        lines += [f"- {method} on {', '.join(keys)}: {reason}" for (method, reason), keys in seen.items()]
        lines.append("")
    if record.get("notes"):
        lines += ["Run notes:", ""]
        lines += [f"- {n}" for n in record["notes"]]
        lines.append("")
    notes = record["config"].get("method_notes", {})
    lines += ["Methods:", ""]
    lines += [f"- **{name}**: {notes[name]}" for name in record["methods"] if name in notes]
    lines.append("")
    return lines


def _ablation_markdown(record: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for entry in record["ablation"]:
        groups[(entry["dataset"], entry["scenario"], entry["sigma_n"])].append(entry)
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
        lines += _notes_lines(record) + _configuration_lines(record)
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
        name = f"{e['dataset']} {e['scenario']} σ={e['sigma_n']:g}"
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


def _wrap(text: str, width: int, fits) -> list[str]:
    """`text` in lines that fit `width` pixels (long words are cut)."""
    lines: list[str] = []
    current = ""
    for char in text:
        if current and not fits(current + char, width):
            cut = max(current.rfind(" "), current.rfind("_"))
            if cut > 0 and char != " ":
                lines.append(current[: cut + 1].rstrip())
                current = current[cut + 1 :]
            else:
                lines.append(current.rstrip())
                current = ""
        current = (current + char).lstrip() if not current else current + char
    if current:
        lines.append(current)
    return lines or [""]


def _label_strip(labels: Sequence[str], cell_width: int, line_height: int = 12) -> np.ndarray:
    """Column labels, each wrapped to its cell's width."""
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fits(text: str, width: int) -> bool:
        return measure.textlength(text) <= width

    wrapped = [_wrap(text, max(cell_width - 6, 6), fits) for text in labels]
    height = 4 + line_height * max(len(w) for w in wrapped)
    strip = Image.new("RGB", (cell_width * len(labels), height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, lines in enumerate(wrapped):
        for j, line in enumerate(lines):
            draw.text((i * cell_width + 3, 2 + j * line_height), line, fill=(0, 0, 0))
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
    record = json.loads(path.read_text())
    schema = str(record.get("schema", ""))
    if schema != f"{SCHEMA_PREFIX}{SCHEMA_VERSION}":
        print(f"{path}: schema {schema!r}; this version rebuilds {SCHEMA_PREFIX}{SCHEMA_VERSION} records only", file=sys.stderr)
        return 2
    for written in write_reports(record, path.parent):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
