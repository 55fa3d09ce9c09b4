"""Why large images are tiled on the CPU, and which tile costs least per pixel (docs/runtime.md, "Large images").

The UNet's self-attention layers compare every position with every other at their resolution,
so a whole-image call costs more per pixel the larger the image; a tile of fixed size costs the
same per pixel anywhere, plus the pixels its overlap recomputes. This script measures both, one
thread, process CPU time, medians over interleaved rounds, on the bundled prior:

- whole: one UNet call per whole-image size (batch 1): ms per call and per megapixel; and the
  torch model (the same layers as the exported graph) timed the same way, with the time inside
  its attention blocks (forward hooks) split off: how much of the growth attention explains;
- tiles: per tile size T (overlap max(16, T/8), the runtime's rule) and per --tile-batches b,
  one call of b tiles, per tile; with the tile counts `TiledDenoiser.plan` gives for each
  --large image, the predicted ms per megapixel of the tiled image (time per tile × tiles /
  pixels): recomputation (the overlap) against the tile's own cost per pixel;
- direct: the TiledDenoiser itself on each --large image, every --direct-tiles size at every
  --tile-batches batch: measured ms per megapixel (checks the prediction).

  python -m diffpir_rt.benchmarks.tile_cost --out benchmarks/results/tile_cost
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import DEFAULT_TILE_BATCH, ModelSource, TiledDenoiser
from diffpir_rt.runtime import Restorer

from . import harness

logger = logging.getLogger("benchmarks.tile_cost")

OUT = Path("tile-cost-results")
PARTS = ("whole", "tiles", "direct")


def overlap_for(tile: int) -> int:
    """The runtime's overlap rule (runtime.TilingPolicy): tile / 8, at least 16, at most half the tile."""
    return min(max(16, tile // 8), tile // 2)


def parse_hw(text: str) -> tuple[int, int]:
    """'W' or 'WxH' -> (H, W)."""
    try:
        w, _, h = text.partition("x")
        width, height = int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W or WxH, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return height, width


def cpu_ms(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def rounds(arms: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median process-CPU ms per arm over `repeats` interleaved rounds (after one warm-up round)."""
    samples: dict[str, list[float]] = {a: [] for a in arms}
    names = list(arms)
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[: r % len(names)]:
            ms = cpu_ms(arms[name])
            if r:
                samples[name].append(ms)
    return {a: statistics.median(v) for a, v in samples.items()}


class AttentionTimer:
    """Process-CPU time spent inside the torch UNet's attention blocks (forward hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self._start: list[float] = []
        self.handles = []
        for m in module.modules():
            if type(m).__name__ == "AttentionBlock":
                self.handles.append(m.register_forward_pre_hook(lambda *_: self._start.append(time.process_time())))
                self.handles.append(m.register_forward_hook(lambda *_: self._stop()))

    def _stop(self) -> None:
        self.total += time.process_time() - self._start.pop()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def part_whole(args: argparse.Namespace, model: Any, torch_model: Any) -> list[dict[str, Any]]:
    t = torch.full((1,), 500, dtype=torch.int64)
    inputs = {s: torch.randn(1, 3, s, s) for s in args.sizes}
    module = getattr(torch_model, "denoiser", torch_model)
    timer = AttentionTimer(module)
    attention: dict[int, list[float]] = {s: [] for s in args.sizes}

    def torch_call(size: int) -> None:
        before = timer.total
        torch_model(inputs[size], t)
        attention[size].append((timer.total - before) * 1e3)

    arms: dict[Any, Callable[[], Any]] = {s: (lambda x=x: model(x, t)) for s, x in inputs.items()}
    arms.update({("torch", s): (lambda s=s: torch_call(s)) for s in args.sizes})
    medians = rounds(arms, args.repeats)
    timer.close()
    rows = []
    for size in args.sizes:
        mp = size * size / 1e6
        ms, torch_ms = medians[size], medians[("torch", size)]
        attention_ms = statistics.median(attention[size][1:])  # the warm-up round's left out, as in `rounds`
        rows.append({"size": size, "ms": round(ms, 1), "ms_per_mp": round(ms / mp, 1), "torch_ms_per_mp": round(torch_ms / mp, 1),
                     "torch_attention_ms_per_mp": round(attention_ms / mp, 1),
                     "torch_other_ms_per_mp": round((torch_ms - attention_ms) / mp, 1),
                     "attention_share_torch": round(attention_ms / torch_ms, 3), "load_1min": harness.load_average()[0]})  # fmt: skip
        logger.info("whole %4d²: %.0f ms, %.0f ms/MP; torch %.0f ms/MP of which attention %.0f (%.0f %%)", size, ms, ms / mp,
                    torch_ms / mp, attention_ms / mp, 100 * attention_ms / torch_ms)  # fmt: skip
    return rows


def part_tiles(args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    arms: dict[tuple[int, int], Callable[[], Any]] = {}
    for tile in args.tiles:
        for batch in args.tile_batches:
            x, t = torch.randn(batch, 3, tile, tile), torch.full((batch,), 500, dtype=torch.int64)
            arms[(tile, batch)] = lambda x=x, t=t: model(x, t)
    medians = rounds(arms, args.repeats)
    rows = []
    for (tile, batch), ms in medians.items():
        per_tile = ms / batch
        row: dict[str, Any] = {"tile": tile, "batch": batch, "overlap": overlap_for(tile), "ms_per_tile": round(per_tile, 2),
                               "ms_per_mp_of_tile": round(per_tile / (tile * tile / 1e6), 1), "large": {}}  # fmt: skip
        for height, width in args.large:
            plan = TiledDenoiser(model, tile, overlap_for(tile)).plan(height, width)
            count = 1 if plan is None else plan.count
            recomputed = count * tile * tile / (height * width)
            row["large"][f"{width}x{height}"] = {"tiles": count, "pixels_run_per_pixel": round(recomputed, 3),
                                                 "predicted_ms_per_mp": round(per_tile * count / (height * width / 1e6), 1)}  # fmt: skip
        rows.append(row)
        logger.info("tile %3d (overlap %d, batch %d): %.1f ms/tile, %.0f ms/MP of tile; %s", tile, overlap_for(tile), batch, per_tile,
                    row["ms_per_mp_of_tile"], "; ".join(f"{k}: {v['tiles']} tiles, x{v['pixels_run_per_pixel']}, "
                                                        f"{v['predicted_ms_per_mp']} ms/MP" for k, v in row["large"].items()))  # fmt: skip
    return rows


def part_direct(args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    t = torch.full((1,), 500, dtype=torch.int64)
    rows = []
    for height, width in args.large:
        x = torch.randn(1, 3, height, width)
        arms = {(tile, batch): (lambda tiled=TiledDenoiser(model, tile, overlap_for(tile), batch): tiled(x, t))
                for tile in args.direct_tiles for batch in args.tile_batches}  # fmt: skip
        medians = rounds(arms, max(1, args.repeats - 1))
        for (tile, batch), ms in medians.items():
            mp = height * width / 1e6
            rows.append({"image": f"{width}x{height}", "tile": tile, "batch": batch, "overlap": overlap_for(tile), "ms": round(ms, 1),
                         "ms_per_mp": round(ms / mp, 1), "load_1min": harness.load_average()[0]})  # fmt: skip
            logger.info("direct %dx%d tile %d batch %d: %.0f ms, %.0f ms/MP", width, height, tile, batch, ms, ms / mp)
    return rows


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        "# Time per pixel of the bundled prior's UNet on the CPU: whole images and tiles",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']} ({meta['cpu_count']} cores), "
        f"{meta['torch_threads']} thread(s); UNet: {meta['path']}; load average {meta['load_average']} at the start, "
        f"{meta.get('load_average_end')} at the end",
        f"- process CPU time, medians over {meta['repeats']} interleaved rounds after a warm-up; reproduce: `{meta['command']}`",
    ]
    if document.get("whole"):
        lines += ["", "## Whole images (batch 1)", "",
                  "| size | ms per call | ms per megapixel | torch model: ms per MP | of which attention | the rest | attention share |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in document["whole"]:
            lines.append(f"| {r['size']}² | {r['ms']:.0f} | {r['ms_per_mp']:.0f} | {r['torch_ms_per_mp']:.0f} | "
                         f"{r['torch_attention_ms_per_mp']:.0f} | {r['torch_other_ms_per_mp']:.0f} | {100 * r['attention_share_torch']:.0f} % |")  # fmt: skip
    if document.get("tiles"):
        large = list(document["tiles"][0]["large"])
        lines += ["", "## Tiles, and the tiled cost they predict for the large images", "",
                  "| tile | overlap | tiles per call | ms per tile | ms per MP of tile | "
                  + " | ".join(f"{k}: tiles, pixels run per pixel, ms/MP" for k in large) + " |",
                  "|---|---|---|---|---|" + "---|" * len(large)]  # fmt: skip
        for r in document["tiles"]:
            cells = " | ".join(f"{v['tiles']}, ×{v['pixels_run_per_pixel']:.2f}, **{v['predicted_ms_per_mp']:.0f}**" for v in r["large"].values())
            lines.append(f"| {r['tile']} | {r['overlap']} | {r['batch']} | {r['ms_per_tile']:.1f} | {r['ms_per_mp_of_tile']:.0f} | {cells} |")
    if document.get("direct"):
        lines += ["", "## The TiledDenoiser measured on the large images", "", "| image | tile | overlap | tiles per call | ms per call | ms per MP |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in document["direct"]:
            lines.append(f"| {r['image']} | {r['tile']} | {r['overlap']} | {r['batch']} | {r['ms']:.0f} | {r['ms_per_mp']:.0f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    restorer = Restorer(ModelSource(), backend=args.backend, precision=args.precision, device="cpu", threads=args.threads,
                        tile="off", notify=lambda line: logger.info("%s", line))  # fmt: skip
    model = restorer.denoiser
    torch_model = model if args.backend == "torch" else Restorer(ModelSource(), backend="torch", precision="fp32", device="cpu",
                                                                 threads=args.threads, tile="off").denoiser  # fmt: skip
    path = restorer.describe()["path"]
    document: dict[str, Any] = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "time per pixel of the UNet, whole images vs tiles (docs/runtime.md)", "repeats": args.repeats,
            "path": f"{path['name']} ({path['backend']}, {path['precision']})", "tile_batch": DEFAULT_TILE_BATCH,
            "command": "python -m diffpir_rt.benchmarks.tile_cost " + " ".join(args.argv),
        },
    }  # fmt: skip
    with torch.no_grad():
        for part in args.parts:
            if part == "whole":
                document["whole"] = part_whole(args, model, torch_model)
            elif part == "tiles":
                document["tiles"] = part_tiles(args, model)
            else:
                document["direct"] = part_direct(args, model)
            document["meta"]["load_average_end"] = harness.load_average()
            harness.write_json(args.out / "results.json", document)
            (args.out / "results.md").write_text(markdown(document))
    return document


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.tile_cost", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--sizes", nargs="+", type=cliargs.positive_int, default=[64, 128, 256, 384, 512, 768, 1024],
                        help="whole-image sides")  # fmt: skip
    parser.add_argument("--tiles", nargs="+", type=cliargs.positive_int, default=[64, 96, 128, 192, 256, 384],
                        help="tile sides (multiples of the model's size multiple)")  # fmt: skip
    parser.add_argument("--large", nargs="+", type=parse_hw, default=[(1024, 1024), (1536, 2048)], help="tiled images, W or WxH")
    parser.add_argument("--tile-batches", nargs="+", type=cliargs.positive_int, default=[1, DEFAULT_TILE_BATCH], help="tiles per UNet call")
    parser.add_argument("--direct-tiles", nargs="+", type=cliargs.positive_int, default=[128, 192], help="tiles of the direct part")
    parser.add_argument("--repeats", type=cliargs.positive_int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--backend", default="onnxruntime", help="the UNet's backend (the default CPU path: onnxruntime)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path, default=OUT, help="results folder")
    return harness.parse_script_args(parser, argv)


main = harness.script_main(parse_args, run)


if __name__ == "__main__":
    raise SystemExit(main())
