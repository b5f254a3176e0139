"""Running a job's snapshot: top-K on uploaded images (through the deploy net the job
derived from its train net), and the confusion matrix on its dataset's val split."""

from __future__ import annotations

import base64
import io
import shutil
import threading
import uuid
from pathlib import Path

from PIL import Image

from netforge.config.loading import load_net_param
from netforge.deploy.predict import Predictor
from netforge.deploy.preprocess import with_options
from netforge.errors import ConfigError, DataError
from netforge.inspect.confusion import confusion_of_net
from netforge.net import Net
from netforge.serve import networks
from netforge.serve.jobs import Jobs
from netforge.serve.workspace import Workspace

MAX_IMAGES = 64
THUMBNAIL = 96


class Classification:
    def __init__(self, workspace: Workspace, jobs: Jobs):
        self.workspace = workspace
        self.jobs = jobs
        self.lock = threading.Lock()  # one net at a time: the CPU is shared with the jobs

    def snapshot(self, job: dict, iteration: int | None) -> dict:
        snapshots = job["snapshots"]
        if not snapshots:
            raise ConfigError(f"job {job['id']} has no snapshot yet")
        if iteration is None:
            return snapshots[-1]
        for item in snapshots:
            if item["iteration"] == iteration:
                return item
        raise ConfigError(f"job {job['id']} has no snapshot at iteration {iteration} "
                          f"(has {', '.join(str(s['iteration']) for s in snapshots)})")

    def _dataset(self, job: dict) -> dict:
        dataset = self.jobs.datasets.get(job["dataset_id"])
        if dataset is None or dataset["state"] != "done":
            raise ConfigError(f"the dataset of job {job['id']} is gone")
        return dataset

    def classify(self, job_id: int, images: list[tuple[str, bytes]], iteration=None,
                 top_k: int = 5) -> dict:
        """Top-K for each (file name, bytes); unreadable images are listed as skipped."""
        if not images:
            raise ConfigError("upload at least one image")
        if len(images) > MAX_IMAGES:
            raise ConfigError(f"at most {MAX_IMAGES} images at once, got {len(images)}")
        job = self.jobs.require(job_id)
        dataset = self._dataset(job)
        chosen = self.snapshot(job, iteration)
        folder = self.jobs.folder(job_id)
        train_net = load_net_param(folder / "net.prototxt")
        transform = networks.transform_of(train_net)
        mean_file = (self.workspace.dataset_dir(dataset["id"]) / "mean.binaryproto"
                     if transform.HasField("mean_file") else None)
        shape = dataset["info"]["shape"]
        settings = with_options(None, mean_file=mean_file, mean_values=list(transform.mean_value),
                                scale=transform.scale if transform.HasField("scale") else None,
                                image_dims=(shape[1], shape[2]))
        upload = self.workspace.root / "uploads" / uuid.uuid4().hex
        upload.mkdir(parents=True)
        try:
            paths = []
            for index, (name, data) in enumerate(images):
                path = upload / f"{index:03d}{Path(name).suffix.lower()[:5]}"
                path.write_bytes(data)
                paths.append(path)
            skipped = []
            with self.lock:
                net = Net(folder / "deploy.prototxt", "test", weights=folder / chosen["weights"])
                try:
                    settings.input = net.inputs[0]
                    predictor = Predictor(net, settings, dataset["info"]["labels"],
                                          batch_size=min(len(paths), 16))
                    results = list(predictor.run(
                        paths, top_k=min(top_k, len(dataset["info"]["labels"])),
                        on_skip=lambda p, why: skipped.append((p, why))))
                finally:
                    net.close()
            names = {str(path): name for path, (name, _) in zip(paths, images, strict=True)}
            return {
                "snapshot": chosen["iteration"],
                "results": [{"name": names[str(r.path)], "image": thumbnail(Path(r.path)),
                             "top": [{"index": i, "label": label, "probability": p}
                                     for i, label, p in r.top]} for r in results],
                "skipped": [{"name": names[str(p)],
                             "reason": why.replace(str(p), names[str(p)])}
                            for p, why in skipped],
            }
        finally:
            shutil.rmtree(upload, ignore_errors=True)

    def confusion(self, job_id: int, iteration=None) -> dict:
        """Per-class accuracy and the confusion matrix on the val split (all, without one)."""
        job = self.jobs.require(job_id)
        dataset = self._dataset(job)
        chosen = self.snapshot(job, iteration)
        folder = self.jobs.folder(job_id)
        split = "val" if "val" in dataset["info"]["splits"] else "all"
        samples = sum(dataset["info"]["counts"][split])
        with self.lock:
            net = Net(folder / "net.prototxt", "test", weights=folder / chosen["weights"])
            try:
                batch = networks.test_batch_size(net.param)
                result = confusion_of_net(net, networks.test_iterations(samples, batch),
                                          dataset["info"]["labels"], limit=samples)
            finally:
                net.close()
        return {"snapshot": chosen["iteration"], "split": split, **result.to_dict()}


def thumbnail(path: Path) -> str:
    """The image as a small PNG data URL, to show beside its classes."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            if max(image.size) < THUMBNAIL:  # digits are 28 px: show them bigger, crisp
                factor = THUMBNAIL // max(image.size)
                image = image.resize((image.width * factor, image.height * factor),
                                     Image.NEAREST)
            out = io.BytesIO()
            image.save(out, "PNG")
    except OSError as exc:
        raise DataError(f"{path.name}: {exc}") from None
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
