"""Where the runs of a comparison train: one after another in this process, or as Ray tasks.

An executor gets the comparison's pending (entry, seeds) and trains them. The local executor
calls `MMSA_run` once per entry (and once more for the seeds after one that diverged). The
Ray executor makes each (entry, seed) one Ray task: the task trains in a scratch folder of its
worker and returns what the run wrote (its seeds row, predictions, diagnostics, log and
checkpoint bytes); the driver, this process, writes all of it under its own folders. Workers
need no shared file system: the config file and, where a worker lacks it, the feature file
travel with the task (a feature file goes through Ray's object store once and is written to the
worker's scratch folder only when no file of the same sha256 is at the driver's path there).
With `storage` (an fsspec URL: a local folder, `s3://...`, `gs://...`), workers write their
checkpoints there instead.

A worker that dies costs its own run only: Ray retries it once (`max_retries=1`); a run that
fails for good, or raises, is reported in `failures` while the others go on.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import pandas as pd

from .. import compat, runs
from ..errors import ConfigError, TrainingDiverged

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Grid:
    """What every run of a comparison shares: MMSA_run's arguments other than model and seeds."""
    dataset: str
    config_file: str | None
    feature_paths: dict
    gpu_ids: list | None
    num_workers: int
    verbose_level: int
    model_save_dir: Path
    res_save_dir: Path
    log_dir: Path


@dataclass
class Outcome:
    """The runs an executor finished and those that failed ('name seed N: why')."""
    finished: list = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class LocalExecutor:
    """Today's behaviour: one `MMSA_run` per entry, here, one seed after another. A seed whose
    training diverges (TrainingDiverged) or runs out of GPU memory costs that seed only, as a
    failed Ray task does: it is reported in `failures` and the entry's later seeds run in one
    more `MMSA_run`."""

    def run(self, pending: list, grid: Grid, advance: Callable) -> Outcome:
        import MMSA
        import torch

        outcome = Outcome()

        def after(args, results, is_tune, seed_run):
            outcome.finished.append((runs.run_name(args), args["seed"]))
            advance(runs.run_name(args), args["seed"])

        compat.RUN_HOOKS["after"].append(after)
        try:
            for entry, seeds in pending:
                remaining = list(seeds)
                while remaining:
                    try:
                        MMSA.MMSA_run(
                            entry.model, grid.dataset, config_file=grid.config_file,
                            config=entry.config, seeds=remaining, gpu_ids=grid.gpu_ids,
                            num_workers=grid.num_workers, verbose_level=grid.verbose_level,
                            model_save_dir=grid.model_save_dir,
                            res_save_dir=grid.res_save_dir, log_dir=grid.log_dir,
                            **grid.feature_paths)
                        remaining = []
                    except (TrainingDiverged, torch.cuda.OutOfMemoryError) as failed:
                        # Seeds run in order: the failed one is the first not finished.
                        done = {seed for name, seed in outcome.finished if name == entry.name}
                        seed = next(seed for seed in remaining if seed not in done)
                        reason = str(failed).splitlines()[0] if str(failed) else "failed"
                        if isinstance(failed, torch.cuda.OutOfMemoryError):
                            reason = f"out of GPU memory ({reason})"
                        outcome.failures.append(f"{entry.name} seed {seed}: {reason}")
                        remaining = remaining[remaining.index(seed) + 1:]
        finally:
            compat.RUN_HOOKS["after"].remove(after)
        return outcome


# --- Ray ---------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray, which is not installed: "
                          "pip install -e \".[ray]\" (or pip install ray)") from None
    return ray


@dataclass(frozen=True)
class ShippedFile:
    """A driver's input file, for workers: its path there, sha256 and an object-store handle."""
    path: str
    sha256: str
    ref: object


@dataclass(frozen=True)
class RunRequest:
    """One (entry, seed) for a worker."""
    name: str
    model: str
    config: dict
    seed: int
    dataset: str
    config_text: str | None
    features: dict  # MMSA_run keyword (custom_feature, feature_T, ...) -> ShippedFile
    num_workers: int
    verbose_level: int
    cpu_threads: int
    storage: str | None


@dataclass
class RunResult:
    """What one run wrote, for the driver to write: files of its results folder by relative path
    (the seeds file excluded), its seeds rows, its log, its checkpoint (bytes, or where in the
    storage it went), and the worker's host."""
    name: str
    seed: int
    files: dict[str, bytes]
    rows: pd.DataFrame
    log: str
    checkpoint_name: str
    checkpoint: bytes | None
    checkpoint_uri: str | None
    host: str


def _local_copy(shipped: ShippedFile, scratch: Path) -> str:
    """The driver's path when this machine has the same file there, else the shipped bytes."""
    import ray

    here = Path(shipped.path)
    if here.is_file() and runs.file_sha256(here) == shipped.sha256:
        return shipped.path
    copy = scratch / "inputs" / f"{shipped.sha256[:16]}-{here.name}"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(ray.get(shipped.ref))
    return str(copy)


def train_one_run(request: RunRequest) -> RunResult:
    """The body of a Ray task: one seed of one entry, trained in a scratch folder."""
    import ray
    import torch

    import MMSA
    import mmsa_iidaf  # noqa: F401 -- installs the plugin in this worker

    torch.set_num_threads(request.cpu_threads)
    with tempfile.TemporaryDirectory(prefix="mmsa-iidaf-run-") as scratch_name:
        scratch = Path(scratch_name)
        folders = {kind: scratch / kind for kind in ("models", "results", "logs")}
        config_file = None
        if request.config_text is not None:
            config_file = scratch / "config.json"
            config_file.write_text(request.config_text)
        features = {key: _local_copy(shipped, scratch) for key, shipped in request.features.items()}
        MMSA.MMSA_run(
            request.model, request.dataset, config_file=config_file, config=request.config,
            seeds=[request.seed], gpu_ids=[0] if ray.get_gpu_ids() else None,
            num_workers=request.num_workers, verbose_level=request.verbose_level,
            model_save_dir=folders["models"], res_save_dir=folders["results"],
            log_dir=folders["logs"], **features)
        seeds_file = runs.seeds_csv(folders["results"], request.name, request.dataset)
        files = {str(path.relative_to(folders["results"])): path.read_bytes()
                 for path in folders["results"].rglob("*")
                 if path.is_file() and path != seeds_file
                 and path.relative_to(folders["results"]).parts[0] != "normal"}
        checkpoints = list(folders["models"].glob("*.pth"))
        checkpoint_name = checkpoints[0].name if checkpoints else ""
        checkpoint, checkpoint_uri = (checkpoints[0].read_bytes() if checkpoints else None), None
        if checkpoint is not None and request.storage:
            import fsspec

            checkpoint_uri = f"{request.storage.rstrip('/')}/{checkpoint_name}"
            with fsspec.open(checkpoint_uri, "wb", auto_mkdir=True) as out:
                out.write(checkpoint)
            checkpoint = None
        logs = "".join(path.read_text() for path in sorted(folders["logs"].glob("*.log")))
        return RunResult(request.name, request.seed, files, pd.read_csv(seeds_file), logs,
                         checkpoint_name, checkpoint, checkpoint_uri, socket.gethostname())


def check_reachable(address: str | None) -> None:
    """ConfigError in one line when nothing answers at a `host:port` (or `ray://host:port`)
    address: Ray itself retries such an address for minutes without a word."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray's own parsing says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise ConfigError(f"--ray-address {address}: nothing answers there "
                          f"({error.strerror or error}): start the cluster (ray start --head) "
                          f"or give its address") from None


class RayExecutor:
    """Each (entry, seed) one Ray task reserving `gpus_per_run` GPUs (None: 1 when the cluster
    has GPUs, else 0) and `cpus_per_run` CPUs; torch in the task uses that many threads."""

    def __init__(self, address: str | None = None, gpus_per_run: float | None = None,
                 cpus_per_run: int = 1, storage: str | None = None):
        self.address = address
        self.gpus_per_run = gpus_per_run
        self.cpus_per_run = cpus_per_run
        self.storage = storage
        if cpus_per_run < 1:
            raise ConfigError(f"--cpus-per-run {cpus_per_run}: give at least 1")
        check_reachable(address)
        if gpus_per_run is not None and gpus_per_run < 0:
            raise ConfigError(f"--gpus-per-run {gpus_per_run}: give 0 or more")
        if storage:
            try:
                import fsspec

                fsspec.url_to_fs(storage)
            except (ImportError, ValueError) as error:
                raise ConfigError(f"--storage {storage}: {error} (give a folder or an fsspec "
                                  f"URL such as s3://bucket/runs)") from None

    def _connect(self, ray) -> None:
        if not ray.is_initialized():
            # address=None is Ray's own resolution: RAY_ADDRESS, a cluster started on this
            # machine, else a new local Ray for this run.
            ray.init(address=self.address, log_to_driver=False)

    def run(self, pending: list, grid: Grid, advance: Callable) -> Outcome:
        ray = _import_ray()
        self._connect(ray)
        gpus = self.gpus_per_run
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=gpus,
                          max_retries=1)(train_one_run)
        config_text = Path(grid.config_file).read_text() if grid.config_file else None
        features = {key: ShippedFile(str(Path(path).resolve()), runs.file_sha256(Path(path)),
                                     ray.put(Path(path).read_bytes()))
                    for key, path in grid.feature_paths.items() if path}
        futures = {}
        for entry, seeds in pending:
            for seed in seeds:
                request = RunRequest(entry.name, entry.model, entry.config, seed, grid.dataset,
                                     config_text, features, grid.num_workers,
                                     grid.verbose_level, self.cpus_per_run, self.storage)
                futures[task.remote(request)] = (entry.name, seed)
        outcome = Outcome()
        while futures:
            (done,), _ = ray.wait(list(futures), num_returns=1)
            name, seed = futures.pop(done)
            try:
                result = ray.get(done)
            except Exception as error:  # a task error or a worker lost twice: its run only
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
                outcome.failures.append(f"{name} seed {seed}: {type(error).__name__}: {reason}")
                continue
            write_result(result, grid)
            outcome.finished.append((name, seed))
            advance(name, seed)
        return outcome


def write_result(result: RunResult, grid: Grid) -> None:
    """A worker's run, written by the driver as a local run would have written it."""
    res_dir = Path(grid.res_save_dir)
    for relative, content in result.files.items():
        path = res_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    checkpoint = Path(grid.model_save_dir) / result.checkpoint_name
    if result.checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(result.checkpoint)
    Path(grid.log_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(grid.log_dir) / f"{result.name}-{grid.dataset}-ray.log", "a") as log:
        log.write(result.log)
    rows = result.rows.copy()
    # Where the driver keeps what the worker made; the feature file is the same (sha256).
    rows["checkpoint"] = str(checkpoint)
    rows["checkpoint_uri"] = result.checkpoint_uri or ""
    rows["worker"] = result.host
    main_feature = grid.feature_paths.get("custom_feature")
    if main_feature:
        rows["feature_file"] = str(Path(main_feature).resolve())
    path = runs.seeds_csv(res_dir, result.name, grid.dataset)
    table = pd.concat([pd.read_csv(path), rows], ignore_index=True) if path.is_file() else rows
    partial = path.with_suffix(".csv.partial")
    table.to_csv(partial, index=False)
    os.replace(partial, path)


def fetch_checkpoints(rows: pd.DataFrame) -> None:
    """Copy to its local path every checkpoint of `rows` that a Ray run left in storage only."""
    if "checkpoint_uri" not in rows:
        return
    import fsspec

    for _, row in rows.iterrows():
        uri, local = row.get("checkpoint_uri"), Path(str(row["checkpoint"]))
        if isinstance(uri, str) and uri and not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            with fsspec.open(uri, "rb") as source:
                local.write_bytes(source.read())


def make_executor(name: str, **options):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        _import_ray()
        return RayExecutor(**options)
    raise ConfigError(f"unknown executor '{name}': choose one of {', '.join(EXECUTORS)}")
