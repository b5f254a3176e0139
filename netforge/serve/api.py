"""The JSON API under /api/: everything the pages do (documented at /api, templates/api.html).

Bodies are form fields (urlencoded or multipart, for uploads) or a JSON object; answers are
JSON, with ``{"error": "..."}`` and a 4xx status for a refusal.
"""

from __future__ import annotations

import asyncio
import json

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from netforge.errors import ConfigError
from netforge.serve import networks
from netforge.serve.charts import chart_svg
from netforge.serve.forms import Fields, FormError
from netforge.serve.jobs import FINISHED
from netforge.serve.store import NotFound

SSE_POLL_SECONDS = 0.5


class UploadTooLarge(ConfigError):
    """A request body over the workspace's upload bound (answered 413)."""


async def read_fields(request: Request) -> tuple[Fields, dict[str, list[tuple[str, bytes]]]]:
    """(fields, uploaded files by field name) of a form or JSON body, within the bound."""
    limit = request.app.state.workspace.max_upload_bytes
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        body = await request.body()
        try:
            values = json.loads(body or b"{}")
        except ValueError as exc:
            raise FormError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise FormError("the JSON body must be an object of fields")
        return Fields(values), {}
    if kind and not kind.startswith(("multipart/form-data",
                                     "application/x-www-form-urlencoded")):
        raise FormError(f'unsupported body type "{kind.split(";")[0]}"; send a form or JSON')
    try:
        form = await request.form(max_files=64, max_fields=200, max_part_size=limit)
    except UploadTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 — python-multipart's parse errors vary
        raise FormError(f"the form could not be read: {exc}") from None
    values, files = {}, {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            if value.filename:
                files.setdefault(key, []).append((value.filename, data))
        else:
            values[key] = value
    return Fields(values), files


def _id(request: Request, key: str = "id") -> int:
    try:
        return int(request.path_params[key])
    except ValueError:
        raise FormError(f"{key} must be a number") from None


def _job_json(request: Request, job: dict) -> dict:
    records = request.app.state.jobs.metrics(job["id"])
    last = {}
    for record in records:
        last[record.get("phase", "train")] = record
    return {**job, "url": f"/jobs/{job['id']}", "latest": last,
            "metrics_url": f"/api/jobs/{job['id']}/metrics"}


def _dataset_json(dataset: dict) -> dict:
    return {**dataset, "url": f"/datasets/{dataset['id']}"}


# -- datasets -----------------------------------------------------------------------------


async def datasets_list(request: Request):
    return JSONResponse([_dataset_json(d) for d in request.app.state.datasets.list()])


async def datasets_create(request: Request):
    fields, _ = await read_fields(request)
    dataset = request.app.state.datasets.create(fields)
    return JSONResponse(_dataset_json(dataset), status_code=202)


async def dataset_get(request: Request):
    dataset = request.app.state.datasets.get(_id(request))
    if dataset is None:
        raise NotFound(f"no dataset {_id(request)}")
    return JSONResponse(_dataset_json(dataset))


async def dataset_delete(request: Request):
    busy = request.app.state.jobs.running_on(_id(request))
    if busy:
        raise ConfigError(f"dataset {_id(request)} is in use by running job(s) "
                          f"{', '.join(map(str, busy))}; stop them first")
    request.app.state.datasets.delete(_id(request))
    return JSONResponse({"deleted": _id(request)})


async def dataset_image(request: Request):
    name = request.path_params["name"]
    if name not in ("samples.png", "mean.png"):
        return JSONResponse({"error": f"no image {name}"}, status_code=404)
    path = request.app.state.workspace.dataset_dir(_id(request)) / name
    if not path.exists():
        return JSONResponse({"error": f"{name} is not made yet"}, status_code=404)
    return FileResponse(path, media_type="image/png")


async def folders(request: Request):
    path = request.query_params.get("path", ".")
    return JSONResponse({"path": path, "folders": request.app.state.workspace.folders(path)})


async def networks_list(request: Request):
    return JSONResponse({"networks": [*networks.bundled_networks(), "custom"],
                         "solver_types": list(networks.SOLVER_TYPES),
                         "lr_policies": list(networks.LR_POLICIES)})


# -- jobs ---------------------------------------------------------------------------------


async def jobs_list(request: Request):
    return JSONResponse([_job_json(request, j) for j in request.app.state.jobs.list()])


async def jobs_create(request: Request):
    fields, files = await read_fields(request)
    uploaded = None
    if files.get("prototxt_file"):
        name, data = files["prototxt_file"][0]
        try:
            uploaded = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f'field "prototxt_file": {name} is not UTF-8 text') from None
    job = await run_in_threadpool(request.app.state.jobs.create, fields, uploaded)
    return JSONResponse(_job_json(request, job), status_code=201)


async def job_get(request: Request):
    return JSONResponse(_job_json(request, request.app.state.jobs.require(_id(request))))


async def job_action(request: Request):
    jobs, job_id = request.app.state.jobs, _id(request)
    action = request.path_params["action"]
    if action == "stop":
        job = jobs.stop(job_id)
    elif action == "resume":
        job = await run_in_threadpool(jobs.resume, job_id)
    elif action == "clone":
        fields, _ = await read_fields(request)
        job = await run_in_threadpool(jobs.clone, job_id, fields.values)
        return JSONResponse(_job_json(request, job), status_code=201)
    else:
        return JSONResponse({"error": f"unknown action {action}"}, status_code=404)
    return JSONResponse(_job_json(request, job))


async def job_delete(request: Request):
    await run_in_threadpool(request.app.state.jobs.delete, _id(request))
    return JSONResponse({"deleted": _id(request)})


async def job_metrics(request: Request):
    return JSONResponse(request.app.state.jobs.metrics(_id(request)))


async def job_chart(request: Request):
    jobs = request.app.state.jobs
    job = jobs.require(_id(request))
    svg = chart_svg(jobs.metrics(job["id"]), max_iter=job["options"]["max_iter"])
    return Response(svg, media_type="image/svg+xml")


async def job_log(request: Request):
    jobs = request.app.state.jobs
    jobs.require(_id(request))
    return Response(jobs.log_tail(_id(request)), media_type="text/plain; charset=utf-8")


async def job_file(request: Request):
    jobs, job_id = request.app.state.jobs, _id(request)
    jobs.require(job_id)
    name = request.path_params["name"]
    allowed = {s[k] for s in jobs.snapshots(job_id) for k in ("weights", "state") if k in s}
    allowed |= {"net.prototxt", "deploy.prototxt", "solver.prototxt", "train.log",
                jobs.metrics_file(job_id).name}
    path = request.app.state.workspace.child(jobs.folder(job_id), name)
    if name not in allowed or not path.exists():
        return JSONResponse({"error": f"job {job_id} has no file {name}"}, status_code=404)
    return FileResponse(path, filename=name)


async def job_events(request: Request):
    """Server-sent events: ``metrics`` (one record each), ``state`` (on a change), ``end``."""
    jobs, job_id = request.app.state.jobs, _id(request)
    jobs.require(job_id)

    async def stream():
        sent, state = 0, None
        while True:
            records = jobs.metrics(job_id)
            if len(records) < sent:  # a resumed run drops the records past its snapshot
                yield "event: reset\ndata: {}\n\n"
                sent = 0
            for record in records[sent:]:
                yield f"event: metrics\ndata: {json.dumps(record)}\n\n"
            sent = len(records)
            row = jobs.store.get("jobs", job_id)
            if row is None:
                yield "event: end\ndata: {}\n\n"
                return
            if row["state"] != state:
                state = row["state"]
                change = json.dumps({"state": state, "error": row["error"]})
                yield f"event: state\ndata: {change}\n\n"
            if state in FINISHED and len(jobs.metrics(job_id)) == sent:
                yield "event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(SSE_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def job_classify(request: Request):
    fields, files = await read_fields(request)
    images = files.get("images", [])
    result = await run_in_threadpool(
        request.app.state.classification.classify, _id(request), images,
        fields.integer("snapshot", None, low=0), fields.integer("top_k", 5, low=1, high=100))
    return JSONResponse(result)


async def job_confusion(request: Request):
    fields, _ = await read_fields(request)
    result = await run_in_threadpool(request.app.state.classification.confusion, _id(request),
                                     fields.integer("snapshot", None, low=0))
    return JSONResponse(result)


async def health(request: Request):
    return JSONResponse({"ok": True, "workspace": str(request.app.state.workspace.root)})


ROUTES = [
    Route("/api/health", health),
    Route("/api/folders", folders),
    Route("/api/networks", networks_list),
    Route("/api/datasets", datasets_list, methods=["GET"]),
    Route("/api/datasets", datasets_create, methods=["POST"]),
    Route("/api/datasets/{id}", dataset_get, methods=["GET"]),
    Route("/api/datasets/{id}", dataset_delete, methods=["DELETE"]),
    Route("/api/datasets/{id}/{name}", dataset_image),
    Route("/api/jobs", jobs_list, methods=["GET"]),
    Route("/api/jobs", jobs_create, methods=["POST"]),
    Route("/api/jobs/{id}", job_get, methods=["GET"]),
    Route("/api/jobs/{id}", job_delete, methods=["DELETE"]),
    Route("/api/jobs/{id}/metrics", job_metrics),
    Route("/api/jobs/{id}/chart.svg", job_chart),
    Route("/api/jobs/{id}/log", job_log),
    Route("/api/jobs/{id}/events", job_events),
    Route("/api/jobs/{id}/files/{name}", job_file),
    Route("/api/jobs/{id}/classify", job_classify, methods=["POST"]),
    Route("/api/jobs/{id}/confusion", job_confusion, methods=["POST"]),
    Route("/api/jobs/{id}/{action}", job_action, methods=["POST"]),
]
