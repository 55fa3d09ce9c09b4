"""Summarise a gpu_suite.sh run: stage table, test counts, measured figures, kernel table, latency targets.

Reads whatever the stages left (any may be missing or partial) and writes summary.md and
summary.json into the output folder; regenerates latency.md / latency.png from latency.json
when the latency stage was cut off before writing them.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

from . import harness, report


def read_stages(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    header = lines[0].split("\t") if lines else []
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def read_pytest(path: Path) -> Optional[dict[str, Any]]:
    """Counts and failing test ids from a junit XML file."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable junit xml: {exc}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as exc:
        return {"error": f"unreadable {path.name}: {exc}"}


def read_measurements(path: Optional[Path]) -> list[dict[str, Any]]:
    """The figures GPU tests recorded (tests/gpu_support.record_measurement), one JSON object a line."""
    if path is None or not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append({"error": f"unreadable line: {exc}", "line": line[:200]})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.suite_summary",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--stages", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--kernels-markdown", type=Path, default=None)
    parser.add_argument("--measurements", type=Path, default=None,
                        help="JSON lines the GPU tests wrote ($DIFFPIR_SUITE_MEASUREMENTS)")  # fmt: skip
    args = parser.parse_args(argv)
    out: Path = args.out_dir

    stages = read_stages(args.stages)
    tests = read_pytest(out / "pytest.xml")
    measurements = read_measurements(args.measurements)
    kernels = read_json(out / "kernels.json")
    latency = read_json(out / "latency.json")
    if latency and "results" in latency:
        if not (out / "latency.md").is_file():
            (out / "latency.md").write_text(report.markdown(latency))
        if not (out / "latency.png").is_file():
            report.plot(latency, out / "latency.png")
    checks = report.targets(latency) if latency and "results" in latency else []

    lines = ["# DiffPIR GPU suite", "", "| stage | status | seconds | limit |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['limit']} |" for s in stages]
    lines += ["", "## GPU tests", ""]
    if tests is None:
        lines.append("no pytest.xml (the test stage did not run or was killed)")
    elif "error" in tests:
        lines.append(tests["error"])
    else:
        lines.append(f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped (of {tests['tests']})")  # fmt: skip
        lines += [f"- FAILED {name}" for name in tests["failed"]]
    if measurements:
        lines += ["", "Measured by the tests (thresholds marked provisional were never measured before):", "",
                  "| figure | value | threshold | context |", "|---|---|---|---|"]  # fmt: skip
        for m in measurements:
            context = {k: v for k, v in m.items() if k not in ("name", "value", "threshold")}
            value = f"{m['value']:.2f}" if isinstance(m.get("value"), (int, float)) else m.get("value")
            lines.append(f"| {m.get('name')} | {value} | {m.get('threshold')} | {json.dumps(context, sort_keys=True)} |")
    lines += [""]
    if args.kernels_markdown and args.kernels_markdown.is_file():
        lines.append(args.kernels_markdown.read_text())
    else:
        lines.append("## Fused kernels\n\nno kernel micro-benchmark results")
    lines += ["", "## Latency", ""]
    if latency and "results" in latency:
        done = [r for r in latency["results"] if "error" not in r]
        lines.append(f"{len(done)} of {len(latency['results'])} configurations measured; table in latency.md")
        if checks:
            lines += ["", "| target | value | met | backend |", "|---|---|---|---|"]
            for c in checks:
                met = "–" if c["ok"] is None else ("yes" if c["ok"] else "NO")
                lines.append(f"| {c['target']} | {c['value']} | {met} | {c['backend']} |")
    else:
        lines.append("no latency.json (the latency stage did not run or failed early)")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    harness.write_json(out / "summary.json", {"stages": stages, "tests": tests, "measurements": measurements,
                                              "kernels": kernels, "targets": checks})  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
