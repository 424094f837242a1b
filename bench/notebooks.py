"""Notebook run benchmark: the overhead of one recorded run of a trivial notebook against the
plain ``papermill`` command line running the same notebook, measured in the same run.

Measured (medians of --repeat runs, the two interleaved so both see the same machine):
- opencdms run_notebook: validation against the parameter schema, the job row (accepted,
  running, finished), papermill parameterisation and execution in a fresh ``opencdms`` kernel
  that receives the settings as its environment, the executed notebook and its HTML rendering
  written to the bucket, the recorded outputs read back.
- baseline: ``papermill in.ipynb out.ipynb -p x N`` as a subprocess (what a cron job or an
  event service shelling out would do), which writes only the executed notebook.

How the recorded run stays cheaper than the bare command although it does more:
- The interpreter is reused: papermill, nbclient, jupyter_client and nbconvert are imported
  once per process (the command pays a Python start and these imports every time, ~1.5 s).
- The registry parses a notebook once and re-reads it only when its mtime/size change; each
  run copies the cached node.
- The nbconvert HTML exporter (templates, Jinja environment) is built once and reused.
- No per-cell saves: papermill's command writes the whole notebook to disk at every cell start
  and end; the runner keeps the notebook in memory and writes it once, to the bucket.
- Kernels are *not* kept warm: each run gets a fresh kernel (no state carried from one run to
  the next, and the environment is the run's own), so the kernel start (~0.5 s) is paid by both.

Queue throughput (same run): --jobs (100) trivial jobs submitted to the queue, run by one
``opencdms worker`` process, then by two (each with --concurrency, default 1); the time from
the first submission to the last job finished.  The ratio (two workers' jobs per second over
one's) is the scaling of the claim loop on this machine: the kernel start of each job is CPU
work, so on 2 cores the target is >= 1.6.

Usage: python bench/notebooks.py [--repeat 7] [--jobs 100] [--concurrency 1] [--skip-overhead | --skip-queue]
Runs on the embedded PostgreSQL of a temporary home unless OPENCDMS_DATABASE_URL names a server.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Measurement, report, timed  # noqa: E402

from opencdms_kernel.bucket import open_bucket  # noqa: E402
from opencdms_kernel.db import migrate  # noqa: E402
from opencdms_kernel.db.engine import Datastore  # noqa: E402
from opencdms_kernel.notebooks import (  # noqa: E402
    JobStatus,
    ensure_kernel_spec,
    open_registry,
    run_notebook,
    submit_job,
    wait_for_job,
)
from opencdms_kernel.notebooks.execution import kernel_environment, render_html  # noqa: E402
from opencdms_kernel.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_trivial_notebook(folder: Path) -> Path:
    """A notebook with a parameter and one computation, declared for the opencdms kernel."""
    parameters = new_code_cell("x: int = 1  # a number")
    parameters.metadata["tags"] = ["parameters"]
    notebook = new_notebook(
        cells=[new_markdown_cell("# Trivial\n\nDoubles a number."), parameters, new_code_cell("y = x * 2\ny")],
        metadata={"kernelspec": {"name": "opencdms", "display_name": "OpenCDMS (Python 3)", "language": "python"},
                  "language_info": {"name": "python"}},
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trivial.ipynb"
    nbformat.write(notebook, path)
    return path


def papermill_command(source: Path, target: Path, x: int) -> None:
    """The baseline: the plain papermill command, as a subprocess."""
    papermill = Path(sys.executable).parent / "papermill"
    subprocess.run([str(papermill), str(source), str(target), "-p", "x", str(x), "--no-progress-bar"],
                   check=True, capture_output=True)


def start_worker(settings: Settings, database_url: str, concurrency: int) -> subprocess.Popen[str]:
    """An ``opencdms worker`` process on the benchmark's installation, once it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "opencdms_kernel.cli", "worker", "--concurrency", str(concurrency)],
        env=kernel_environment(settings, database_url=database_url), cwd=settings.home,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    banner = process.stdout.readline()  # type: ignore[union-attr]
    if "worker: running jobs" not in banner:
        raise SystemExit(f"the worker did not start: {banner}{process.stdout.read()}")  # type: ignore[union-attr]
    return process


def queue_throughput(settings: Settings, datastore: Datastore, registry: object, jobs: int, workers: int,
                     concurrency: int) -> tuple[float, float]:
    """Seconds for ``workers`` worker processes to run ``jobs`` queued trivial jobs, and the CPU
    seconds the workers and their kernels used (start-up included)."""
    database_url = datastore.url.render_as_string(hide_password=False)
    cpu_before = _children_cpu()
    processes = [start_worker(settings, database_url, concurrency) for _ in range(workers)]
    try:
        started = time.perf_counter()
        submitted = [submit_job(datastore, registry, "trivial", {"x": n}, trigger="bench", user="bench")  # type: ignore[arg-type]
                     for n in range(jobs)]
        for job in submitted:
            done = wait_for_job(datastore, job.id, timeout=600)
            if done.status is not JobStatus.SUCCESSFUL:
                raise SystemExit(f"job {job.id} {done.status.value}: {done.error}")
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    return elapsed, _children_cpu() - cpu_before


def _children_cpu() -> float:
    """CPU seconds of the waited-for children of this process and theirs (workers, kernels)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=100, help="queued jobs per throughput measurement")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs each worker runs at once")
    parser.add_argument("--skip-overhead", action="store_true", help="measure the queue throughput only")
    parser.add_argument("--skip-queue", action="store_true", help="measure the run overhead only")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="opencdms-bench-notebooks-"))
    try:
        ensure_kernel_spec(ROOT)
        source = write_trivial_notebook(home / "notebooks")
        settings = Settings(home=home, notebook_dir=home / "notebooks")
        with Datastore.open(settings) as datastore:
            migrate.upgrade(datastore)
            bucket = open_bucket(settings)
            registry = open_registry(home / "notebooks")
            where = "embedded PostgreSQL" if settings.embedded_database else "PostgreSQL at OPENCDMS_DATABASE_URL"
            print(f"home {home}, {where}", flush=True)

            def recorded(x: int) -> None:
                job = run_notebook("trivial", {"x": x}, settings=settings, datastore=datastore, bucket=bucket,
                                   registry=registry, trigger="bench", user="bench")
                if job.status is not JobStatus.SUCCESSFUL:
                    raise SystemExit(f"run failed: {job.error}")

            # Warm-up, not timed: the first run imports papermill/nbconvert and builds the exporter.
            started = time.perf_counter()
            recorded(0)
            print(f"first recorded run (cold imports): {time.perf_counter() - started:.2f} s", flush=True)

            one = Measurement(f"queue: {args.jobs} jobs, 1 worker x {args.concurrency}", args.jobs)
            two = Measurement(f"queue: {args.jobs} jobs, 2 workers x {args.concurrency}", args.jobs)
            for measurement, workers in () if args.skip_queue else ((one, 1), (two, 2)):
                load = os.getloadavg()[0]
                seconds, cpu = queue_throughput(settings, datastore, registry, args.jobs, workers, args.concurrency)
                measurement.seconds.append(seconds)
                # CPU per job says what the machine allows: two cores give at most 2 / cpu-per-job
                # jobs per second, less whatever else the machine is running (the load average).
                print(f"{measurement.name}: {seconds:.1f} s ({measurement.rate:.2f} jobs/s); "
                      f"CPU {cpu / args.jobs:.2f} s per job; load average before {load:.1f}, "
                      f"after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
            if not args.skip_queue:
                report("queue throughput (trivial notebook)", [one, two],
                       [("2 workers' jobs/s / 1 worker's jobs/s", two.rate / one.rate, ">=", 1.6)])
            if args.skip_overhead:
                return

            ours = Measurement("opencdms run_notebook (job row, papermill, ipynb+HTML)", 1)
            baseline = Measurement("baseline: papermill command (subprocess)", 1)
            for repeat in range(args.repeat):
                ours.seconds.append(timed(lambda: recorded(repeat + 1)))
                baseline.seconds.append(timed(lambda: papermill_command(source, home / "out.ipynb", repeat + 1)))
                print(f"run {repeat + 1}: recorded {ours.seconds[-1]:.2f} s, papermill command "
                      f"{baseline.seconds[-1]:.2f} s", flush=True)

            # Where the recorded run's time goes (medians of small parts, for the reader).
            executed = nbformat.read(home / "out.ipynb", as_version=4)
            html = Measurement("  of which: HTML rendering (reused exporter)", 1)
            check = Measurement("  of which: registry lookup + validation", 1)
            for _ in range(args.repeat):
                html.seconds.append(timed(lambda: render_html(executed)))
                check.seconds.append(timed(lambda: registry.validate("trivial", {"x": 3})))
    finally:
        shutil.rmtree(home, ignore_errors=True)

    report(
        "notebook run overhead (trivial notebook)",
        [ours, baseline, html, check],
        [("recorded run time / papermill command time", ours.median / baseline.median, "<=", 0.5)],
    )


if __name__ == "__main__":
    main()
