"""ONNX Runtime session start-up, with and without the optimised graph kept beside the cached export.

    python -m diffpir_rt.benchmarks.ort_session --rounds 9 --out benchmarks/results/ort_session

Before: the export opened as it is, ONNX Runtime optimising it (ORT_ENABLE_ALL) on every
run: a copy of the cached export in a folder without a kept graph, which is what every run
did before the graph was kept. After: the cached export as the runtime opens it, i.e. the
kept optimised graph checked against its record (SHA-256) and opened with optimisation off.
Both through the engine's one loader (make_denoiser_from), interleaved per round, in one
process; then one UNet call of each, to show they compute the same eps. JSON first, then
markdown; the load average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import ModelSource, make_denoiser_from
from diffpir_rt.runtime import Restorer

from . import harness


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = ModelSource("checkpoint", args.checkpoint, args.arch) if args.checkpoint else ModelSource()
    started_load = harness.load_average()
    restorer = Restorer(source, device="cpu", threads=args.threads)  # makes the export and its kept graph once
    described = restorer.denoiser.describe()
    cached = Path(described["onnx"])
    with tempfile.TemporaryDirectory(prefix="diffpir-ort-session-") as folder:
        plain = Path(folder) / cached.name
        shutil.copyfile(cached, plain)
        arms = {"before: export, ORT_ENABLE_ALL": plain, "after: kept optimised graph": cached}
        samples: dict[str, list[float]] = {name: [] for name in arms}
        opened: dict[str, Any] = {}
        for round_ in range(args.rounds):
            for name in (list(arms) if round_ % 2 == 0 else list(arms)[::-1]):
                time.sleep(args.pause)
                start = time.perf_counter()
                opened[name] = make_denoiser_from(ModelSource("onnx", arms[name]), device="cpu", threads=args.threads)
                samples[name].append((time.perf_counter() - start) * 1e3)
        x_t = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        eps = {name: d(x_t, 500) for name, d in opened.items()}
        first, second = eps.values()
        document = {
            "meta": harness.environment(torch.device("cpu")) | {
                "model": source.to_dict(),
                "graph_bytes": {name: path.stat().st_size for name, path in arms.items()},
                "kept_graph": described.get("optimized_graph"),
                "load_average_at_start": started_load,
                "load_average_at_end": harness.load_average(),
                "command": "python -m diffpir_rt.benchmarks.ort_session " + " ".join(args.argv),
            },
            "results": {name: {"median_ms": statistics.median(s), "min_ms": min(s), "samples_ms": [round(v, 2) for v in s],
                               "graph_optimization": opened[name].describe()["graph_optimization"]}
                        for name, s in samples.items()},  # fmt: skip
            "max_abs_eps_difference": float((first - second).abs().max()),
        }
    before, after = (document["results"][name]["median_ms"] for name in arms)
    document["saved_ms"] = before - after
    document["speedup"] = before / after
    harness.write_json(args.out / "ort_session.json", document)
    (args.out / "ort_session.md").write_text(markdown(document))
    print(markdown(document))
    return document


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        f"# ONNX Runtime session start-up: {meta['model'].get('kind')} model ({meta['date_utc']})",
        "",
        f"- commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']}, load average {meta['load_average_at_start']} "
        f"at start, {meta['load_average_at_end']} at end (2 shared cores: other jobs ran)",
        f"- rerun: `{meta['command']}`",
        "",
        "| session | graph optimisation at load | median ms | min ms |",
        "|---|---|---|---|",
    ]
    for name, r in document["results"].items():
        lines.append(f"| {name} | {r['graph_optimization']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} |")
    lines += ["", f"Saved per run: {document['saved_ms']:.1f} ms ({document['speedup']:.2f}× faster session creation); "
              f"max |eps difference| between the two sessions: {document['max_abs_eps_difference']:.3g}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.ort_session", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="torch weights (default: the bundled prior)")
    parser.add_argument("--arch", default=None, help="arch of --checkpoint")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1, help="intra-op threads of the sessions")
    parser.add_argument("--rounds", type=cliargs.positive_int, default=9, help="sessions opened per arm")
    parser.add_argument("--size", type=cliargs.positive_int, default=64, help="side of the parity check's input")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds before each session")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_session"), help="output folder")
    return harness.parse_script_args(parser, argv)


main = harness.script_main(parse_args, run)


if __name__ == "__main__":
    raise SystemExit(main())
