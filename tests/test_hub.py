"""Pushing to the Hub, with the network replaced at huggingface_hub's HTTP client (httpx2 transport)."""

from __future__ import annotations

import json

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import _http

from prune.errors import HubError
from prune.hub import push_to_hub


class FakeHub:
    """Answers the Hub API calls an upload makes, and records them."""

    def __init__(self, create_status: int = 200, fail_with: Exception | None = None):
        self.requests: list[httpx2.Request] = []
        self.create_status = create_status
        self.fail_with = fail_with

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        path = request.url.path
        if path == "/api/repos/create":
            if self.create_status != 200:
                return httpx2.Response(self.create_status, json={"error": "denied"})
            return httpx2.Response(200, json={"url": "https://huggingface.co/me/pruned"})
        if path == "/api/validate-yaml" or "/branch/" in path:
            return httpx2.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx2.Response(200, json={"files": modes})
        if "/commit/" in path:
            oid = "a" * 40
            return httpx2.Response(
                200,
                json={"commitUrl": f"https://huggingface.co/me/pruned/commit/{oid}", "commitOid": oid},
            )
        return httpx2.Response(404, json={"error": "not found"})

    def calls(self, fragment: str) -> list[httpx2.Request]:
        return [r for r in self.requests if fragment in r.url.path]


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / "config.json").write_text('{"num_hidden_layers": 4}')
    (folder / "prune_report.json").write_text("{}")
    return folder


@pytest.fixture
def fake_hub(monkeypatch):
    """Route huggingface_hub's shared httpx2 client to a FakeHub; offline mode off for this test only."""

    def install(hub: FakeHub, *, offline: bool = False) -> FakeHub:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        # keep huggingface_hub's own request hook (it enforces offline mode) in front of the fake transport
        _http.set_client_factory(
            lambda: httpx2.Client(
                transport=httpx2.MockTransport(hub), event_hooks={"request": [_http.hf_request_event_hook]}
            )
        )
        return hub

    yield install
    _http.set_client_factory(_http.default_client_factory)


def test_upload_creates_repo_branch_and_commits_the_folder(fake_hub, model_folder):
    hub = fake_hub(FakeHub())
    url = push_to_hub(
        model_folder,
        "me/pruned",
        private=True,
        revision="v1",
        token="hf_test",
        card="---\nlicense: mit\n---\n# hi\n",
    )
    assert url == "https://huggingface.co/me/pruned/tree/v1"

    (create,) = hub.calls("/api/repos/create")
    assert json.loads(create.content) == {
        "name": "pruned",
        "organization": "me",
        "visibility": "private",
        "type": "model",
    }
    assert create.headers["authorization"] == "Bearer hf_test"
    (branch,) = hub.calls("/api/models/me/pruned/branch/v1")
    assert branch.method == "POST"
    (preupload,) = hub.calls("/api/models/me/pruned/preupload/v1")
    assert {f["path"] for f in json.loads(preupload.content)["files"]} == {
        "README.md",
        "config.json",
        "prune_report.json",
    }
    (commit,) = hub.calls("/api/models/me/pruned/commit/v1")
    lines = [json.loads(line) for line in commit.content.decode().splitlines()]
    assert lines[0]["key"] == "header" and "prune-llm" in lines[0]["value"]["summary"]
    assert sorted(line["value"]["path"] for line in lines if line["key"] == "file") == [
        "README.md",
        "config.json",
        "prune_report.json",
    ]
    # the card is written into the folder and the folder is still there
    assert (model_folder / "README.md").read_text().startswith("---\nlicense: mit")
    assert (model_folder / "config.json").is_file()


def test_upload_to_main_public_without_branch(fake_hub, model_folder):
    hub = fake_hub(FakeHub())
    url = push_to_hub(model_folder, "me/pruned", token="hf_test", commit_message="custom message")
    assert url == "https://huggingface.co/me/pruned"
    assert json.loads(hub.calls("/api/repos/create")[0].content)["visibility"] == "public"
    assert not hub.calls("/branch/")
    (commit,) = hub.calls("/api/models/me/pruned/commit/main")
    assert json.loads(commit.content.decode().splitlines()[0])["value"]["summary"] == "custom message"
    assert not (model_folder / "README.md").exists()  # no card given, none written


def test_no_token_is_a_clear_error(monkeypatch, model_folder):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match=r"no Hugging Face token: run `hf auth login` or set HF_TOKEN") as err:
        push_to_hub(model_folder, "me/pruned")
    assert str(model_folder) in str(err.value)
    assert (model_folder / "config.json").is_file()


def test_offline_mode_keeps_the_folder_and_sends_nothing(fake_hub, model_folder):
    hub = fake_hub(FakeHub(), offline=True)
    with pytest.raises(HubError, match="offline mode is on") as err:
        push_to_hub(model_folder, "me/pruned", token="hf_test", card="# card")
    message = str(err.value)
    assert f"kept in {model_folder}" in message and "unset HF_HUB_OFFLINE" in message and "\n" not in message
    assert hub.requests == []
    assert sorted(p.name for p in model_folder.iterdir()) == ["README.md", "config.json", "prune_report.json"]


def test_connection_error_keeps_the_folder(fake_hub, model_folder):
    fake_hub(FakeHub(fail_with=httpx2.ConnectError("name resolution failed")))
    with pytest.raises(HubError, match="cannot reach the Hugging Face Hub") as err:
        push_to_hub(model_folder, "me/pruned", token="hf_test")
    assert f"kept in {model_folder}" in str(err.value)
    assert (model_folder / "config.json").is_file()


@pytest.mark.parametrize(
    ("status", "expected"), [(401, "rejected the token"), (403, "no permission to write")]
)
def test_auth_errors_name_the_fix(fake_hub, model_folder, status, expected):
    fake_hub(FakeHub(create_status=status))
    with pytest.raises(HubError, match=expected) as err:
        push_to_hub(model_folder, "me/pruned", token="hf_test")
    assert f"kept in {model_folder}" in str(err.value) and "hf upload me/pruned" in str(err.value)
    assert (model_folder / "config.json").is_file()


def test_bad_folder_and_repo_id(tmp_path, model_folder):
    with pytest.raises(HubError, match="no such folder"):
        push_to_hub(tmp_path / "missing", "me/pruned", token="hf_test")
    with pytest.raises(HubError, match="invalid Hub repo id"):
        push_to_hub(model_folder, "a/b/c", token="hf_test")
