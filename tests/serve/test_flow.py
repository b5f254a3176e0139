"""The whole flow through the JSON API of a real server (``python -m netforge serve`` on a
free loopback port): a dataset from the bundled digits, a short LeNet job whose metrics
arrive live over server-sent events, classification and the confusion matrix checked
against an independent numpy LeNet, stop / resume / clone / delete, and a server restart
that keeps the jobs' state (an interrupted job resumes from its snapshot)."""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest
from PIL import Image

from netforge import netforge_pb2 as pb
from netforge.cli.main import main as cli_main
from netforge.data.records import load_mean_file
from netforge.data.stores import LmdbReader
from tests.serve import reference
from tests.serve.conftest import PER_CLASS
from tests.serve.helpers import ServerProcess, wait_until

pytestmark = pytest.mark.slow
ITERATIONS = 200


def read_split(path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels) of an LMDB split, parsed with the proto module."""
    images, labels = [], []
    with LmdbReader(path) as reader:
        for _key, value in reader:
            datum = pb.Datum()
            datum.ParseFromString(value)
            images.append(np.frombuffer(datum.data, np.uint8).reshape(datum.height, datum.width))
            labels.append(datum.label)
    return np.stack(images), np.asarray(labels)


@pytest.fixture(scope="module")
def server(workspace):
    root, _, _ = workspace
    process = ServerProcess(root)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def dataset(server, workspace):
    client = server.client
    made = client.json("POST", "/api/datasets", {"name": "digits", "source": "digits",
                                                 "gray": "true", "val_fraction": "0.2"},
                       expect=202)
    return wait_until(lambda: (d := client.json("GET", f"/api/datasets/{made['id']}"))
                      ["state"] != "converting" and d, 120, what="the conversion")


@pytest.fixture(scope="module")
def trained(server, dataset):
    """Job 1: LeNet for ITERATIONS iterations; the events seen while it ran."""
    client = server.client
    job = client.json("POST", "/api/jobs", {
        "name": "lenet", "dataset": dataset["id"], "network": "lenet",
        "max_iter": ITERATIONS, "snapshot": 100, "display": 10, "test_interval": 100,
        "batch_size": 32, "base_lr": 0.01}, expect=201)
    states_at_metrics = []

    def on_event(name, data):
        if name == "metrics" and not states_at_metrics:
            states_at_metrics.append(client.json("GET", f"/api/jobs/{job['id']}")["state"])

    events = client.events(f"/api/jobs/{job['id']}/events", on_event)
    return job, events, states_at_metrics


def test_dataset_counts_mean_and_samples(server, dataset, workspace):
    root, images, labels = workspace
    client = server.client
    assert dataset["state"] == "done", dataset["error"]
    info = dataset["info"]
    assert info["labels"] == [str(k) for k in range(10)]
    assert info["shape"] == [1, 28, 28]
    assert info["counts"]["val"] == [10] * 10
    assert info["counts"]["train"] == [PER_CLASS - 10] * 10
    folder = root / "datasets" / str(dataset["id"])
    train_images, train_labels = read_split(folder / "db" / "train")
    np.testing.assert_array_equal(np.bincount(train_labels), info["counts"]["train"])
    mean = load_mean_file(folder / "mean.binaryproto")
    np.testing.assert_allclose(mean.reshape(28, 28), train_images.mean(axis=0), atol=1e-3)
    # The grid: one row per class, each cell one of that class's digits (28 px + 2 px gaps).
    status, png, headers = client.request("GET", f"/api/datasets/{dataset['id']}/samples.png")
    assert status == 200 and headers["content-type"] == "image/png"
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert grid.shape == (10 * 30 + 2, 8 * 30 + 2)
    for k in range(10):
        cell = grid[2 + 30 * k: 30 * k + 30, 2:30]
        assert any(np.array_equal(cell, im) for im in images[labels == k]), f"row {k}"
    assert [d["id"] for d in client.json("GET", "/api/datasets")] == [dataset["id"]]


def test_training_metrics_arrive_live(server, trained, workspace):
    root, _, _ = workspace
    client = server.client
    job, events, states_at_metrics = trained
    states = [data["state"] for name, data in events if name == "state"]
    assert states == ["running", "done"]
    assert states_at_metrics == ["running"]  # the first record came while it still ran
    records = [data for name, data in events if name == "metrics"]
    train = [r for r in records if r["phase"] == "train"]
    assert [r["iteration"] for r in train] == list(range(0, ITERATIONS + 1, 10))
    assert [r["iteration"] for r in records if r["phase"] == "test"] == [0, 100, 200]
    assert records == client.json("GET", f"/api/jobs/{job['id']}/metrics")
    assert events[-1][0] == "end"
    final = client.json("GET", f"/api/jobs/{job['id']}")
    assert final["state"] == "done"
    assert [s["iteration"] for s in final["snapshots"]] == [100, 200]
    assert final["latest"]["test"]["outputs"]["accuracy"] > 0.5
    status, data, _ = client.request("GET", f"/api/jobs/{job['id']}/files/"
                                            f"{final['snapshots'][-1]['weights']}")
    assert status == 200
    assert data == (root / "jobs" / str(job["id"]) / final["snapshots"][-1]["weights"]) \
        .read_bytes()
    status, svg, _ = client.request("GET", f"/api/jobs/{job['id']}/chart.svg")
    assert f'data-name="train loss" data-count="{len(train)}"'.encode() in svg
    assert b'data-name="test accuracy" data-count="3"' in svg


def test_classify_matches_an_independent_lenet(server, trained, workspace):
    root, images, labels = workspace
    client = server.client
    job, _, _ = trained
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(10)]
    files = []
    for k, index in enumerate(first):
        out = io.BytesIO()
        Image.fromarray(images[index]).save(out, "PNG")
        files.append((f"digit{k}.png", out.getvalue()))
    files.append(("notes.png", b"not an image"))
    answer = client.json("POST", f"/api/jobs/{job['id']}/classify", {"top_k": "3"},
                         files={"images": files})
    assert answer["snapshot"] == ITERATIONS
    assert [s["name"] for s in answer["skipped"]] == ["notes.png"]
    weights = reference.read_caffemodel(
        root / "jobs" / str(job["id"]) / f"snapshot_iter_{ITERATIONS}.caffemodel")
    expected = reference.lenet_probabilities(weights, images[first])
    assert [r["name"] for r in answer["results"]] == [f"digit{k}.png" for k in range(10)]
    for probs, result in zip(expected, answer["results"], strict=True):
        order = np.argsort(-probs)[:3]
        assert [t["index"] for t in result["top"]] == order.tolist()
        np.testing.assert_allclose([t["probability"] for t in result["top"]], probs[order],
                                   atol=1e-4)
        assert result["image"].startswith("data:image/png;base64,")
    right = sum(r["top"][0]["label"] == str(k) for k, r in enumerate(answer["results"]))
    assert right >= 8  # a trained net, not a lucky one: chance is 1 in 10


def test_confusion_matrix_api_and_cli(server, trained, dataset, workspace, capsys):
    root, _, _ = workspace
    client = server.client
    job, _, _ = trained
    answer = client.json("POST", f"/api/jobs/{job['id']}/confusion", {})
    folder = root / "datasets" / str(dataset["id"])
    val_images, val_labels = read_split(folder / "db" / "val")
    job_dir = root / "jobs" / str(job["id"])
    weights = reference.read_caffemodel(job_dir / f"snapshot_iter_{ITERATIONS}.caffemodel")
    predicted = reference.lenet_probabilities(weights, val_images).argmax(axis=1)
    expected = reference.confusion(val_labels, predicted, 10)
    assert answer["matrix"] == expected.tolist()
    assert answer["total"] == 100 and answer["split"] == "val"
    assert answer["accuracy"] == pytest.approx(np.trace(expected) / 100)
    assert answer["per_class"] == pytest.approx(list(np.diag(expected) / 10))
    # The same from the command line: `netforge test --confusion` (one batch of 100 = val).
    cli_main(["-q", "test", "--model", str(job_dir / "net.prototxt"), "--weights",
              str(job_dir / f"snapshot_iter_{ITERATIONS}.caffemodel"), "--iterations", "1",
              "--confusion", "--labels", str(folder / "db" / "labels.txt")])
    out = capsys.readouterr().out.splitlines()
    start = out.index("confusion matrix (rows: true class, columns: predicted):") + 2
    printed = [[int(v) for v in line.split()[1:]] for line in out[start:start + 10]]
    assert printed == expected.tolist()
    assert out[0].startswith(f"accuracy = {np.trace(expected) / 100:.4f}")


def test_stop_resume_clone_delete(server, trained, workspace):
    root, _, _ = workspace
    client = server.client
    job, _, _ = trained
    clone = client.json("POST", f"/api/jobs/{job['id']}/clone",
                        {"name": "again", "max_iter": 100000}, expect=201)
    assert clone["name"] == "again" and clone["options"]["max_iter"] == 100000
    assert {k: v for k, v in clone["options"].items() if k != "max_iter"} == \
        {k: v for k, v in job["options"].items() if k != "max_iter"}
    wait_until(lambda: client.json("GET", f"/api/jobs/{clone['id']}/metrics"), 120,
               what="the clone's first record")
    status, answer = client.json("DELETE", f"/api/datasets/{job['dataset_id']}", expect=None)
    assert status == 400 and answer["error"] == (f"dataset {job['dataset_id']} is in use by "
                                                 f"running job(s) {clone['id']}; stop them first")
    client.json("POST", f"/api/jobs/{clone['id']}/stop")
    stopped = wait_until(lambda: (j := client.json("GET", f"/api/jobs/{clone['id']}"))
                         ["state"] != "running" and j, 120, what="the stop")
    assert stopped["state"] == "stopped"
    last = stopped["snapshots"][-1]["iteration"]  # written on the way out
    assert 0 < last < 100000
    resumed = client.json("POST", f"/api/jobs/{clone['id']}/resume")
    assert resumed["state"] == "running"
    wait_until(lambda: [r for r in client.json("GET", f"/api/jobs/{clone['id']}/metrics")
                        if r["iteration"] > last + 20], 120, what="records after the resume")
    client.json("POST", f"/api/jobs/{clone['id']}/stop")
    wait_until(lambda: client.json("GET", f"/api/jobs/{clone['id']}")["state"] == "stopped",
               120, what="the second stop")
    iterations = [r["iteration"] for r in client.json("GET", f"/api/jobs/{clone['id']}/metrics")
                  if r["phase"] == "train"]
    assert iterations == sorted(set(iterations))  # one story: nothing repeated by the resume
    log = client.request("GET", f"/api/jobs/{clone['id']}/log")[1].decode()
    assert f"--snapshot {root / 'jobs' / str(clone['id'])}/snapshot_iter_{last}" \
           ".solverstate" in log
    assert client.json("DELETE", f"/api/jobs/{clone['id']}") == {"deleted": clone["id"]}
    assert client.json("GET", f"/api/jobs/{clone['id']}", expect=404)["error"] == \
        f"no job {clone['id']}"
    assert not (root / "jobs" / str(clone["id"])).exists()


def test_restart_keeps_jobs_and_resumes_the_interrupted_one(server, trained, workspace):
    process, client = server, server.client
    job, _, _ = trained
    long_job = client.json("POST", "/api/jobs", {
        "name": "long", "dataset": job["dataset_id"], "network": "lenet", "max_iter": 100000,
        "snapshot": 0, "display": 5, "batch_size": 16}, expect=201)
    wait_until(lambda: client.json("GET", f"/api/jobs/{long_job['id']}/metrics"), 120,
               what="the long job's first record")
    # SIGTERM: the running job snapshots, the server exits (uvicorn re-raises the signal
    # once it has shut down cleanly, so the status is that of SIGTERM).
    assert process.stop() in (0, -signal.SIGTERM)
    client = process.start()
    jobs = {j["id"]: j for j in client.json("GET", "/api/jobs")}
    assert jobs[job["id"]]["state"] == "done"
    assert [s["iteration"] for s in jobs[job["id"]]["snapshots"]] == [100, 200]
    interrupted = jobs[long_job["id"]]
    assert interrupted["state"] == "interrupted"
    (snapshot,) = interrupted["snapshots"]  # the one written on the way out
    assert 0 < snapshot["iteration"] < 100000 and "state" in snapshot
    resumed = client.json("POST", f"/api/jobs/{long_job['id']}/resume")
    assert resumed["state"] == "running"
    later = wait_until(lambda: [r for r in client.json("GET", f"/api/jobs/{long_job['id']}"
                                                               "/metrics")
                                if r["iteration"] > snapshot["iteration"]], 120,
                       what="records after the resume")
    assert later[0]["iteration"] > snapshot["iteration"]
    client.json("POST", f"/api/jobs/{long_job['id']}/stop")
    final = wait_until(lambda: (j := client.json("GET", f"/api/jobs/{long_job['id']}"))
                       ["state"] != "running" and j, 120, what="the stop")
    assert final["state"] == "stopped"
    assert final["snapshots"][-1]["iteration"] > snapshot["iteration"]


def test_a_job_outlives_a_crashed_server_and_is_adopted(server, trained):
    process, client = server, server.client
    job, _, _ = trained
    orphan = client.json("POST", "/api/jobs", {
        "name": "orphan", "dataset": job["dataset_id"], "network": "lenet",
        "max_iter": 100000, "snapshot": 0, "display": 5, "batch_size": 16}, expect=201)
    wait_until(lambda: client.json("GET", f"/api/jobs/{orphan['id']}/metrics"), 120,
               what="the job's first record")
    process.kill()
    client = process.start()
    adopted = client.json("GET", f"/api/jobs/{orphan['id']}")
    assert adopted["state"] == "running" and adopted["pid"] == orphan["pid"]
    seen = len(client.json("GET", f"/api/jobs/{orphan['id']}/metrics"))
    wait_until(lambda: len(client.json("GET", f"/api/jobs/{orphan['id']}/metrics")) > seen,
               120, what="the adopted job to go on training")
    client.json("POST", f"/api/jobs/{orphan['id']}/stop")
    final = wait_until(lambda: (j := client.json("GET", f"/api/jobs/{orphan['id']}"))
                       ["state"] != "running" and j, 120, what="the adopted job to stop")
    assert final["state"] == "stopped" and final["pid"] is None
    assert final["snapshots"] and final["snapshots"][-1]["iteration"] > 0
