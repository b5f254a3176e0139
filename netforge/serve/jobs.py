"""Training jobs: each one a ``python -m netforge train`` subprocess in ``jobs/<id>/``.

The folder holds ``network.prototxt`` (the net as chosen, kept for clones), ``net.prototxt``
(pointed at the dataset), ``solver.prototxt``, ``train.log`` and the snapshots
``snapshot_iter_N.*`` with the metrics file ``snapshot_metrics.jsonl``. A job's state lives
in the store: running, done, stopped (by the user), interrupted (by a server stop, or found
dead after a restart), error. A subprocess that crashes only ends its own job; one still
running when the server restarts is adopted again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from google.protobuf import text_format

from netforge.errors import ConfigError
from netforge.serve import networks
from netforge.serve.datasets import Datasets
from netforge.serve.forms import Fields, FormError
from netforge.serve.store import NotFound, Store
from netforge.serve.workspace import Workspace
from netforge.train.metrics import metrics_path, read_metrics

log = logging.getLogger("netforge.serve")
PREFIX = "snapshot"
SNAPSHOT_RE = re.compile(rf"^{PREFIX}_iter_(\d+)\.(caffemodel|solverstate)(\.h5)?$")
FINISHED = ("done", "stopped", "interrupted", "error")


def pid_runs(pid: int | None, marker: str) -> bool:
    """Whether process ``pid`` is alive and its command line mentions ``marker``."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


class Jobs:
    def __init__(self, workspace: Workspace, store: Store, datasets: Datasets,
                 python: str = sys.executable):
        self.workspace = workspace
        self.store = store
        self.datasets = datasets
        self.python = python
        self.procs: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.shutting_down = False
        self._recover()

    # -- files ---------------------------------------------------------------------------
    def folder(self, job_id: int) -> Path:
        return self.workspace.job_dir(job_id)

    def metrics_file(self, job_id: int) -> Path:
        return metrics_path(self.folder(job_id) / PREFIX)

    def metrics(self, job_id: int) -> list[dict]:
        return read_metrics(self.metrics_file(job_id))

    def snapshots(self, job_id: int) -> list[dict]:
        """Snapshots by iteration: {"iteration", "weights", "state"} (file names)."""
        found: dict[int, dict] = {}
        folder = self.folder(job_id)
        if folder.is_dir():
            for path in folder.iterdir():
                match = SNAPSHOT_RE.match(path.name)
                if match:
                    key = "weights" if match.group(2) == "caffemodel" else "state"
                    found.setdefault(int(match.group(1)), {"iteration": int(match.group(1))})[
                        key] = path.name
        return [found[i] for i in sorted(found) if "weights" in found[i]]

    def log_tail(self, job_id: int, max_bytes: int = 64 << 10) -> str:
        path = self.folder(job_id) / "train.log"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", "replace")

    # -- rows ----------------------------------------------------------------------------
    def get(self, job_id: int) -> dict | None:
        row = self.store.get("jobs", job_id)
        if row is not None:
            row["snapshots"] = self.snapshots(job_id)
        return row

    def require(self, job_id: int) -> dict:
        row = self.get(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        return row

    def list(self) -> list[dict]:
        return [self.get(row["id"]) for row in self.store.all("jobs")]

    def running_on(self, dataset_id: int) -> list[int]:
        """Ids of the jobs training on a dataset now (it may not be deleted under them)."""
        return [row["id"] for row in self.store.all("jobs", dataset_id=int(dataset_id))
                if row["state"] in ("running", "starting")]

    # -- creating ------------------------------------------------------------------------
    def create(self, fields: Fields, uploaded_prototxt: str | None = None) -> dict:
        name = fields.text("name", required=True, max_length=80)
        dataset_id = fields.integer("dataset", required=True, low=1)
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise FormError(f'field "dataset": no dataset {dataset_id}')
        if dataset["state"] != "done":
            raise FormError(f'field "dataset": dataset {dataset_id} is {dataset["state"]}')
        bundled = networks.bundled_networks()
        network = fields.choice("network", (*bundled, "custom"), "lenet")
        if network == "custom":
            text = uploaded_prototxt or fields.text("prototxt", max_length=networks.
                                                    MAX_PROTOTXT_CHARS)
            if not text:
                raise FormError('field "prototxt": paste or upload a net for "custom"')
        else:
            text = bundled[network].read_text(encoding="utf-8")
        options = {**networks.solver_options(fields), "network": network}
        param = networks.parse_network(text, "custom net" if network == "custom" else network)
        job_id = self.store.insert("jobs", name=name, dataset_id=dataset_id, state="starting",
                                   options=options)
        try:
            self._write_files(job_id, dataset, param, text, options)
        except Exception:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
            self.store.delete("jobs", job_id)
            raise
        self.start(job_id)
        return self.get(job_id)

    def _write_files(self, job_id, dataset, param, text, options) -> None:
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        splits = ["train", "val"] if "val" in dataset["info"]["splits"] else [""]
        db_root = self.datasets.db_path(dataset, "")
        db = {"train": db_root / splits[0], "val": db_root / splits[-1]}
        mean_file = self.workspace.dataset_dir(dataset["id"]) / "mean.binaryproto"
        classes = len(dataset["info"]["labels"])
        train_net = networks.prepare_train_net(param, db, mean_file, classes,
                                               options["batch_size"] or None)
        val_count = sum(dataset["info"]["counts"][splits[-1] or "all"])
        networks.fit_test_batch(train_net, val_count)
        test_iter = networks.test_iterations(val_count, networks.test_batch_size(train_net))
        deploy = networks.deploy_net(train_net, tuple(dataset["info"]["shape"]))
        (folder / "network.prototxt").write_text(text, encoding="utf-8")
        (folder / "net.prototxt").write_text(text_format.MessageToString(train_net))
        (folder / "deploy.prototxt").write_text(text_format.MessageToString(deploy))
        (folder / "solver.prototxt").write_text(networks.solver_text(
            options, folder / "net.prototxt", folder / PREFIX, test_iter))

    # -- running -------------------------------------------------------------------------
    def start(self, job_id: int, resume_from: Path | None = None) -> None:
        row = self.store.get("jobs", job_id)
        folder = self.folder(job_id)
        options = row["options"]
        command = [self.python, "-m", "netforge", "train",
                   "--solver", str(folder / "solver.prototxt"),
                   "--gpu", str(options["gpu_id"]) if options["device"] == "gpu" else "-1"]
        if resume_from is not None:
            command += ["--snapshot", str(resume_from)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.lock, open(folder / "train.log", "ab") as log_file:
            log_file.write(f"$ netforge {' '.join(command[3:])}\n".encode())
            log_file.flush()
            # Its own session: a Ctrl-C meant for the server reaches the job only through
            # stop(), and a job survives a server that dies (it is adopted on restart).
            proc = subprocess.Popen(command, cwd=folder, stdout=log_file,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
            self.procs[job_id] = proc
            self.store.update("jobs", job_id, state="running", pid=proc.pid, returncode=None,
                              stop_requested=0, error="")
        threading.Thread(target=self._watch, args=(job_id, proc), daemon=True,
                         name=f"job-{job_id}").start()

    def _watch(self, job_id: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self.lock:
            self.procs.pop(job_id, None)
        self._finish(job_id, code)

    def _finish(self, job_id: int, code: int | None) -> None:
        row = self.store.get("jobs", job_id)
        if row is None:
            return
        if self.shutting_down:
            state, error = "interrupted", ""
        elif row["stop_requested"]:
            state, error = "stopped", ""
        elif code == 0:
            state, error = "done", ""
        else:
            state = "error"
            tail = [line for line in self.log_tail(job_id, 4096).splitlines() if line.strip()]
            error = tail[-1] if tail else f"exit status {code}"
        self.store.update("jobs", job_id, state=state, returncode=code, pid=None, error=error)

    def _recover(self) -> None:
        """Jobs left 'running' by a server that stopped: adopt live ones, mark the others."""
        for row in self.store.all("jobs"):
            if row["state"] not in ("running", "starting"):
                continue
            marker = str(self.folder(row["id"]) / "solver.prototxt")
            if pid_runs(row["pid"], marker):
                threading.Thread(target=self._adopt, args=(row["id"], row["pid"], marker),
                                 daemon=True).start()
            else:
                self.store.update("jobs", row["id"], state="interrupted", pid=None)

    def _adopt(self, job_id: int, pid: int, marker: str) -> None:
        while pid_runs(pid, marker):
            time.sleep(1.0)
        row = self.store.get("jobs", job_id)
        done = any(s["iteration"] >= row["options"]["max_iter"] for s in self.snapshots(job_id))
        self.store.update("jobs", job_id, pid=None,
                          state="done" if done else ("stopped" if row["stop_requested"]
                                                     else "interrupted"))

    def _signal(self, job_id: int, sig: int) -> bool:
        row = self.store.get("jobs", job_id)
        with self.lock:
            proc = self.procs.get(job_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            return True
        if row and pid_runs(row["pid"], str(self.folder(job_id) / "solver.prototxt")):
            os.kill(row["pid"], sig)
            return True
        return False

    def stop(self, job_id: int) -> dict:
        """Ask the job to stop: ``netforge train`` snapshots and exits on SIGINT."""
        row = self.require(job_id)
        if row["state"] != "running":
            raise ConfigError(f"job {job_id} is {row['state']}, not running")
        self.store.update("jobs", job_id, stop_requested=1)
        self._signal(job_id, signal.SIGINT)
        return self.get(job_id)

    def resume(self, job_id: int) -> dict:
        """Run again from the newest snapshot's state (from the start if there is none)."""
        row = self.require(job_id)
        if row["state"] not in FINISHED:
            raise ConfigError(f"job {job_id} is {row['state']}; only a finished job resumes")
        states = [s for s in row["snapshots"] if "state" in s]
        resume_from = self.folder(job_id) / states[-1]["state"] if states else None
        if states and states[-1]["iteration"] >= row["options"]["max_iter"]:
            raise ConfigError(f"job {job_id} already reached max_iter "
                              f"{row['options']['max_iter']}; clone it to train longer")
        self.start(job_id, resume_from)
        return self.get(job_id)

    def clone(self, job_id: int, overrides: dict | None = None) -> dict:
        """A new job with this one's network and settings; ``overrides`` (form fields, e.g.
        name or max_iter) change some of them."""
        row = self.require(job_id)
        text = (self.folder(job_id) / "network.prototxt").read_text(encoding="utf-8")
        fields = {**row["options"], "name": f"{row['name']} (clone)",
                  "dataset": row["dataset_id"], "solver_type": row["options"]["type"]}
        fields.update({k: v for k, v in (overrides or {}).items() if v not in (None, "")})
        custom = fields.get("network", row["options"]["network"]) == "custom"
        return self.create(Fields(fields), uploaded_prototxt=text if custom else None)

    def delete(self, job_id: int) -> None:
        row = self.require(job_id)
        if row["state"] == "running":
            self.store.update("jobs", job_id, stop_requested=1)
            self._signal(job_id, signal.SIGKILL)
            with self.lock:
                proc = self.procs.get(job_id)
            if proc is not None:
                proc.wait(timeout=30)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
        self.store.delete("jobs", job_id)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every running job with a snapshot; they show as interrupted and resume."""
        self.shutting_down = True
        with self.lock:
            running = list(self.procs.items())
        for _job_id, proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for job_id, proc in running:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            self._finish(job_id, code)
