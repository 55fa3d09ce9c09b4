"""`diffpir batch`: restore a folder (or a list of files) with Ray Data over Restorer actors.

The driver lists the inputs, skips those whose output and run record already exist
(a rerun resumes), and hands the rest to Ray Data: `map_batches` over a pool of
`BatchRestorer` actors (one per GPU, or per CPU slot), each holding one `Restorer`. An
actor reads its rows' files, builds each `RestoreRequest` as `diffpir restore` does,
groups them by `batch_key` and runs each group with `run_requests`; a file that cannot be
read, or a group that fails, becomes a row with its one-line reason instead of stopping
the job. The driver writes each output (PNG bytes, encoded by the actor) and its record
atomically, prints progress, and ends with a summary: images/s and the failures.

Locally Ray is started for the job and stopped after it; with --address the job runs on
that cluster, whose nodes must see the input paths (a shared file system); outputs are
written by the driver.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from diffpir_rt.errors import DiffPIRError

INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
OUTPUT_FORMATS = {"png": ".png", "tif": ".tif", "jpg": ".jpg"}
SUMMARY_NAME = "diffpir-batch-summary.json"


@dataclass
class Job:
    """One input and where its output goes; `aux` is a per-file kernel or mask from a list file."""

    index: int
    input: Path
    output: Path
    aux: Optional[Path] = None

    @property
    def record(self) -> Path:
        return self.output.with_name(self.output.name + ".json")

    def done(self) -> bool:
        return self.output.is_file() and self.record.is_file()


def list_jobs(source: Path, out_dir: Path, fmt: str = "png") -> list[Job]:
    """The inputs of a folder (recursive, image and .npy files, the output folder left out) or a list file.

    A list file holds one input per line, optionally a tab and that input's own kernel
    (deblur, sr) or mask (inpaint); relative paths are relative to the list file; empty
    lines and lines starting with # are skipped.
    """
    suffix = OUTPUT_FORMATS[fmt]
    pairs: list[tuple[Path, Path, Optional[Path]]] = []  # (input, relative name, aux)
    if source.is_dir():
        out_resolved = out_dir.resolve()
        if out_resolved == source.resolve():
            raise DiffPIRError(f"--output {out_dir}: is the input folder; choose another folder")
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() not in INPUT_SUFFIXES or not path.is_file() or path.name.startswith("."):
                continue
            if out_resolved in path.resolve().parents:
                continue
            pairs.append((path, path.relative_to(source), None))
    elif source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DiffPIRError(f"--input {source}: cannot read the list ({e})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first, _, second = line.rstrip("\n").partition("\t")
            path = (source.parent / first.strip()).resolve() if not Path(first.strip()).is_absolute() else Path(first.strip())
            aux = None
            if second.strip():
                aux = Path(second.strip()) if Path(second.strip()).is_absolute() else (source.parent / second.strip()).resolve()
            pairs.append((path, Path(path.name), aux))
    else:
        raise DiffPIRError(f"--input {source}: no such folder or list file")
    if not pairs:
        raise DiffPIRError(f"--input {source}: no input files ({', '.join(INPUT_SUFFIXES)})")
    jobs: list[Job] = []
    names: dict[Path, int] = {}
    for rel in (rel for _, rel, _ in pairs):
        names[rel.with_suffix(suffix)] = names.get(rel.with_suffix(suffix), 0) + 1
    seen: set[Path] = set()
    for index, (path, rel, aux) in enumerate(pairs):
        name = rel.with_suffix(suffix)
        if names[name] > 1:  # a.png and a.jpg: a.png.png and a.jpg.png
            name = rel.with_name(rel.name + suffix)
        if name in seen:
            raise DiffPIRError(f"--input {source}: two inputs would both be written to {out_dir / name}")
        seen.add(name)
        jobs.append(Job(index, path, out_dir / name, aux))
    return jobs


class BatchRestorer:
    """A Ray Data actor: one Restorer; a batch of rows in, a row per input out."""

    def __init__(self, model: dict[str, Any], task: dict[str, Any]) -> None:
        from diffpir_rt.runtime import Restorer, RuntimeOptions

        self.restorer = Restorer.from_options(RuntimeOptions.from_dict(model))  # exactly as `diffpir restore` makes it
        self.task = task

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from diffpir_rt.runtime import batch_key

        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["index"]))]
        out: dict[int, dict[str, Any]] = {}
        groups: dict[Any, list[tuple[int, Any]]] = {}
        for row in rows:
            index = int(row["index"])
            try:
                request = self._request(row)
                key = batch_key(self.restorer, request)
            except DiffPIRError as e:
                out[index] = _failed(index, str(e))
                continue
            groups.setdefault(key, []).append((index, request))
        for members in groups.values():
            for index, result in self._run(members):
                out[index] = result
        ordered = [out[int(row["index"])] for row in rows]
        return {key: [r[key] for r in ordered] for key in ("index", "status", "reason", "image", "record")}

    def _request(self, row: dict[str, Any]) -> Any:
        """The row's RestoreRequest, built as `diffpir restore` builds it (runtime.build_request);
        a list file's second column is the task's per-image input (a kernel or a mask)."""
        from diffpir_rt.engine import InputFile, TaskInputs
        from diffpir_rt.runtime import RequestOptions, build_request, per_image_input, task_file

        t = self.task
        files = {name: Path(t[name]) if t.get(name) else None for name in ("kernel", "mask")}
        aux_name = per_image_input(t["task"])
        if row["aux"] and aux_name is not None:
            files[aux_name] = Path(str(row["aux"]))
        opened = {name: task_file(path, name) for name, path in files.items()}  # a path, or `auto` (estimated)
        inputs = TaskInputs(kernel=opened["kernel"], kernel_index=t["kernel_index"], mask=opened["mask"], scale=t["scale"])
        image = InputFile.from_path(Path(str(row["input"])), "input")
        request = build_request(t["task"], image, inputs, t["method"], dict(t["overrides"]),
                                RequestOptions(seed=t["seed"], boundary=t.get("boundary", "auto")))  # fmt: skip
        request.config(self.restorer)  # a bad hyperparameter fails this row here
        return request

    def _run(self, members: list[tuple[int, Any]]) -> list[tuple[int, dict[str, Any]]]:
        from diffpir_rt.engine import imageio
        from diffpir_rt.runtime import run_requests

        try:
            outs = run_requests(self.restorer, [r for _, r in members])
        except Exception as e:  # noqa: BLE001 - one input must not fail the others
            if len(members) > 1:
                return [item for member in members for item in self._run([member])]
            return [(members[0][0], _failed(members[0][0], _one_line(e)))]
        results = []
        for (index, request), (image, record) in zip(members, outs):
            depth = self.task["bit_depth"] or request.bit_depth
            if self.task["format"] == "jpg":
                depth = 8
            record["bit_depth"] = depth
            try:
                from diffpir_rt.runtime import output_image

                data = imageio.encode_image(output_image(request, image.detach().cpu()), self.task["format"], depth)
            except DiffPIRError as e:
                results.append((index, _failed(index, str(e))))
                continue
            results.append((index, {"index": index, "status": "done", "reason": "", "image": data,
                                    "record": json.dumps(record, indent=2) + "\n"}))  # fmt: skip
        return results


def _failed(index: int, reason: str) -> dict[str, Any]:
    return {"index": index, "status": "failed", "reason": reason, "image": b"", "record": ""}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(e, DiffPIRError) else f"{type(e).__name__}: {first}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run_batch_job(
    jobs: list[Job],
    model: dict[str, Any],
    task: dict[str, Any],
    *,
    address: Optional[str] = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = 8,
    num_cpus: Optional[int] = None,
    progress: bool = True,
    say=print,
) -> dict[str, Any]:
    """Run the jobs not done yet; returns the summary (also what the command prints)."""
    from .server import quiet_console

    todo = [job for job in jobs if not job.done()]
    skipped = len(jobs) - len(todo)
    summary: dict[str, Any] = {"inputs": len(jobs), "skipped": skipped, "restored": 0, "failed": [], "seconds": 0.0,
                               "restore_seconds": 0.0, "images_per_s": 0.0}  # fmt: skip
    if not todo:
        return summary
    with quiet_console():
        _run_todo(todo, summary, model, task, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                  gpus_per_worker=gpus_per_worker, batch_size=batch_size, num_cpus=num_cpus, progress=progress)
    # images/s of the job itself (actors starting, reading, restoring, writing), without Ray's own start
    if summary["restore_seconds"]:
        summary["images_per_s"] = round(summary["restored"] / summary["restore_seconds"], 3)
    return summary


def _run_todo(todo: list[Job], summary: dict[str, Any], model: dict[str, Any], task: dict[str, Any], *, address: Optional[str],
              workers: int, cpus_per_worker: float, gpus_per_worker: float, batch_size: int, num_cpus: Optional[int],
              progress: bool) -> None:  # fmt: skip
    """Ray up, the jobs through Ray Data, each result written as it arrives; Ray down (whatever happens)."""
    from .server import descendants, end_processes, import_ray

    ray = import_ray("diffpir batch")
    by_index = {job.index: job for job in todo}
    init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        init.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1)
    else:
        init["address"] = address
    from diffpir_rt.runtime import Progress

    start = time.perf_counter()
    before = set(descendants(os.getpid()))
    ray.init(**init)
    try:
        import ray.data

        for name in ("ray", "ray.data"):  # Ray Data's own progress and execution lines: ours are enough
            logging.getLogger(name).setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        items = [{"index": job.index, "input": str(job.input), "aux": str(job.aux) if job.aux else ""} for job in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), -(-len(items) // batch_size))))
        results = dataset.map_batches(
            BatchRestorer, fn_constructor_kwargs={"model": model, "task": task}, batch_size=batch_size,
            concurrency=workers, num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None, batch_format="numpy",
        )  # fmt: skip
        running = time.perf_counter()
        seen: set[int] = set()
        with Progress(len(todo), "diffpir batch", unit="image", enabled=progress, interval=5.0) as bar:
            try:
                for row in results.iter_rows():
                    index = int(row["index"])
                    if index in seen:  # a block computed twice (a retried task): its first copy counted
                        continue
                    seen.add(index)
                    job = by_index[index]
                    if row["status"] == "done":
                        write_atomic(job.output, bytes(row["image"]))
                        write_atomic(job.record, str(row["record"]).encode("utf-8"))  # the record last: it marks done
                        summary["restored"] += 1
                    else:
                        summary["failed"].append({"input": str(job.input), "reason": str(row["reason"])})
                    bar.update(1)
            except ray.exceptions.RayError as e:
                # Ray Data restarts lost actors and retries their tasks; what still fails (the driver's own
                # node lost, every node gone) stops here, with what is written kept for the rerun.
                text = str(e).strip().splitlines()
                raise DiffPIRError(f"the job stopped ({type(e).__name__}: {text[0][:160] if text else ''}); {summary['restored']} of "
                                   f"{len(todo)} outputs were written: run the same command again to finish the rest") from None  # fmt: skip
        summary["restore_seconds"] = round(time.perf_counter() - running, 3)
    finally:
        summary["seconds"] = round(time.perf_counter() - start, 3)
        ray.shutdown()
        if address is None:  # whatever Ray left of the instance this job started (never the caller's own children)
            end_processes([pid for pid in descendants(os.getpid()) if pid not in before])
