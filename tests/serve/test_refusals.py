"""Clear refusals: paths leaving the workspace, oversized uploads, a non-loopback bind
without a token, Python layers in uploaded nets, malformed forms; a crashing job leaves the
server up. The app runs on uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os

import pytest

from netforge.cli.main import main as cli_main
from netforge.errors import ConfigError
from netforge.serve import security
from netforge.serve.app import create_app
from tests.serve.helpers import ThreadServer, wait_until, write_digits

LIMIT = 64 << 10
PYTHON_NET = """
name: "sneaky"
layer { name: "data" type: "Data" top: "data" top: "label" data_param { batch_size: 4 } }
layer { name: "run" type: "Python" bottom: "data" top: "out"
        python_param { module: "os" layer: "system" } }
"""
BROKEN_NET = """
name: "broken"
layer { name: "data" type: "Data" top: "data" top: "label" data_param { batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "nowhere" top: "ip"
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("refusals")
    root = base / "workspace"
    root.mkdir()
    write_digits(root / "digits", 3)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the server")
    os.symlink(outside, root / "link_out")
    (root / "mixed" / "a").mkdir(parents=True)
    os.symlink(outside / "secret.txt", root / "mixed" / "a" / "secret.png")
    with ThreadServer(create_app(root, max_upload_bytes=LIMIT)) as client:
        dataset = client.json("POST", "/api/datasets", {"name": "d", "source": "digits",
                                                        "gray": "true"}, expect=202)
        wait_until(lambda: client.json("GET", f"/api/datasets/{dataset['id']}")["state"]
                   == "done", 60, what="the conversion")
        yield client, dataset["id"], root


@pytest.mark.parametrize("source, words", [
    ("../outside", 'contains ".."'),
    ("digits/../../outside", 'contains ".."'),
    ("/etc", "is absolute"),
    ("link_out", "leads outside the workspace"),
    ("mixed", "symbolic link leading outside"),
    ("no_such_folder", "does not exist"),
])
def test_paths_outside_the_workspace_are_refused(served, source, words):
    client, _, _ = served
    status, answer = client.json("POST", "/api/datasets", {"name": "x", "source": source},
                                 expect=None)
    assert status == 403 and words in answer["error"], answer


def test_file_names_and_folder_listing_stay_inside(served):
    client, _, _ = served
    status, answer = client.json("GET", "/api/folders?path=../", expect=None)
    assert status == 403 and '".."' in answer["error"]
    assert client.json("GET", "/api/folders")["folders"] == ["digits", "link_out", "mixed"]
    for name in ("..%2Fserve.sqlite", "%2E%2E%2F%2E%2E%2Fserve.sqlite", "serve.sqlite"):
        status, body, _ = client.request("GET", f"/api/datasets/1/{name}")
        assert status == 404, (name, body)
    status, body, _ = client.request("GET", "/static/..%2F..%2Fserve.sqlite")
    assert status == 404


def test_oversized_uploads_are_refused(served):
    client, _, _ = served
    big = b"\0" * (LIMIT + 1)
    status, answer = client.json("POST", "/api/jobs/1/classify", {},
                                 files={"images": [("big.png", big)]}, expect=None)
    assert status == 413 and f"the limit is {LIMIT} bytes" in answer["error"]
    # Without a Content-Length (chunked), the bytes are counted as they arrive.
    connection = http.client.HTTPConnection("127.0.0.1", int(client.base.rsplit(":", 1)[1]))
    chunks = (b"x" * 4096 for _ in range(LIMIT // 4096 + 2))
    connection.request("POST", "/api/datasets", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    assert response.status == 413
    assert "over the limit" in json.loads(response.read())["error"]
    connection.close()


def test_non_loopback_bind_needs_a_token(tmp_path, capsys):
    with pytest.raises(ConfigError, match="give --token SECRET"):
        security.bind_token("0.0.0.0", None)
    with pytest.raises(ConfigError, match="at least 8 characters"):
        security.bind_token("0.0.0.0", "short")
    assert security.bind_token("127.0.0.1", None) is None
    assert security.bind_token("::1", None) is None
    generated = security.bind_token("0.0.0.0", "generate")
    assert len(generated) >= 8 and generated != security.bind_token("0.0.0.0", "generate")
    with pytest.raises(SystemExit) as refused:
        cli_main(["serve", "--host", "0.0.0.0", "--port", "0", "--workspace",
                  str(tmp_path / "ws")])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("netforge: error: binding 0.0.0.0 makes the server reachable")
    assert len(err.strip().splitlines()) == 1


def test_token_gate(tmp_path):
    with ThreadServer(create_app(tmp_path / "ws", token="s3cret-token")) as client:
        status, body, _ = client.request("GET", "/api/health")
        assert status == 401 and b"needs its token" in body
        client.token = "wrong-token"
        assert client.request("GET", "/api/jobs")[0] == 401
        client.token = "s3cret-token"
        assert client.request("GET", "/api/jobs")[0] == 200
        client.token = None
        status, _, headers = client.request("GET", "/?token=s3cret-token")
        assert status == 200 and "netforge_token=s3cret-token" in headers["set-cookie"]
        status, _, _ = client.request("GET", "/api/jobs",
                                      headers={"Cookie": "netforge_token=s3cret-token"})
        assert status == 200


def test_python_layers_are_refused(served):
    client, dataset, root = served
    fields = {"name": "py", "dataset": dataset, "network": "custom", "prototxt": PYTHON_NET}
    status, answer = client.json("POST", "/api/jobs", fields, expect=None)
    assert status == 400
    assert answer["error"] == ('custom net: layer "run" is a Python layer; the server does not '
                               "run code from uploaded nets")
    fields.pop("prototxt")
    status, answer = client.json("POST", "/api/jobs", fields, expect=None,
                                 files={"prototxt_file": [("net.prototxt", PYTHON_NET.encode())]})
    assert status == 400 and "Python layer" in answer["error"]
    assert client.json("GET", "/api/jobs") == []
    assert not any((root / "jobs").iterdir())


@pytest.mark.parametrize("fields, message", [
    ({"dataset": "1"}, 'field "name" is required'),
    ({"name": "j", "dataset": "1", "max_iter": "abc"},
     'field "max_iter" must be a whole number, got "abc"'),
    ({"name": "j", "dataset": "1", "max_iter": "0"}, 'field "max_iter" must be at least 1'),
    ({"name": "j", "dataset": "1", "base_lr": "nan"}, 'field "base_lr" must be a finite number'),
    ({"name": "j", "dataset": "1", "network": "nope"}, 'field "network" must be one of'),
    ({"name": "j", "dataset": "99"}, 'field "dataset": no dataset 99'),
    ({"name": "j", "dataset": "1", "network": "custom"}, 'field "prototxt": paste or upload'),
    ({"name": "j", "dataset": "1", "network": "custom", "prototxt": "layer {"},
     "custom net:"),
])
def test_malformed_forms_are_refused(served, fields, message):
    client, _, _ = served
    status, answer = client.json("POST", "/api/jobs", fields, expect=None)
    assert status == 400 and message in answer["error"], answer


def test_malformed_bodies_are_refused(served):
    client, _, _ = served
    for body, kind, words in (
            (b"{not json", "application/json", "the body is not valid JSON"),
            (b"[1, 2]", "application/json", "the JSON body must be an object of fields"),
            (b"hello", "text/plain", 'unsupported body type "text/plain"'),
            (b"--x\r\nbroken", "multipart/form-data; boundary=x", "")):
        status, answer, _ = client.request("POST", "/api/datasets", body, {"Content-Type": kind})
        assert status == 400 and words in json.loads(answer)["error"], answer
    status, body, _ = client.request("GET", "/jobs/12345")
    assert status == 404 and b"no job 12345" in body


def test_a_crashing_job_leaves_the_server_up(served):
    client, dataset, _ = served
    job = client.json("POST", "/api/jobs", {"name": "broken", "dataset": dataset,
                                            "network": "custom", "prototxt": BROKEN_NET,
                                            "max_iter": 10}, expect=201)
    failed = wait_until(lambda: (j := client.json("GET", f"/api/jobs/{job['id']}"))
                        ["state"] != "running" and j, 60, what="the job to fail")
    assert failed["state"] == "error" and failed["returncode"] == 2
    assert failed["error"].startswith("netforge: error:") and "nowhere" in failed["error"]
    assert client.json("GET", "/api/health")["ok"] is True
    status, answer = client.json("POST", f"/api/jobs/{job['id']}/confusion", {}, expect=None)
    assert status == 400 and answer["error"] == f"job {job['id']} has no snapshot yet"


def test_dataset_progress_list_and_delete(served):
    client, first, root = served
    made = client.json("POST", "/api/datasets", {"name": "again", "source": "digits",
                                                 "val_fraction": "0", "encode_type": "png"},
                       expect=202)
    done = wait_until(lambda: (d := client.json("GET", f"/api/datasets/{made['id']}"))
                      ["state"] == "done" and d, 60, what="the conversion")
    assert done["progress"] == {"done": 30, "total": 30}
    assert done["info"]["splits"] == ["all"] and done["info"]["counts"]["all"] == [3] * 10
    assert done["options"]["encoded"] is True
    assert [d["id"] for d in client.json("GET", "/api/datasets")] == [first, made["id"]]
    assert client.json("DELETE", f"/api/datasets/{made['id']}") == {"deleted": made["id"]}
    assert not (root / "datasets" / str(made["id"])).exists()
    for method in ("GET", "DELETE"):
        status, answer = client.json(method, f"/api/datasets/{made['id']}", expect=None)
        assert status == 404 and answer["error"] == f"no dataset {made['id']}"


def test_requests_from_other_sites_are_refused(served):
    client, _, _ = served
    port = client.base.rsplit(":", 1)[1]
    status, body, _ = client.request("POST", "/api/datasets", b"name=x&source=digits",
                                     {"Content-Type": "application/x-www-form-urlencoded",
                                      "Origin": "http://evil.example"})
    assert status == 403 and b"another site (http://evil.example)" in body
    status, body, _ = client.request("GET", "/api/jobs", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and b"loopback name" in body  # DNS rebinding
    status, _, _ = client.request("GET", "/api/jobs", headers={"Host": f"localhost:{port}"})
    assert status == 200
    status, _, _ = client.request("DELETE", "/api/datasets/999",
                                  headers={"Origin": f"http://127.0.0.1:{port}"})
    assert status == 404  # its own pages' requests pass
