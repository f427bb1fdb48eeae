"""`trtbuild fetch` internals: the real huggingface_hub code against a local hub (tests/hub_server.py),
the offline cache, and model ids that name local directories."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from safetensors.torch import save as save_safetensors

from hub_server import LocalHub, Repo
from trtbuild.errors import TrtbuildError
from trtbuild.fetch import download
from trtbuild.models import resolve_source
from trtbuild.workspace import Workspace

TOKEN_OK, TOKEN_NO_ACCESS = "hf_accepted_terms", "hf_never_accepted"


def _checkpoint_files() -> dict[str, bytes]:
    """A tiny sharded checkpoint in the 7B repo's layout, beside the files a download must skip."""
    import torch

    def shard(i: int) -> bytes:
        return save_safetensors({f"layer{i}.weight": torch.full((64, 64), float(i))})

    index = {"metadata": {}, "weight_map": {"layer1.weight": "model-00001-of-00002.safetensors",
                                            "layer2.weight": "model-00002-of-00002.safetensors"}}
    return {
        "config.json": json.dumps({"model_type": "mistral", "vocab_size": 32768}).encode(),
        "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 2}',
        "model-00001-of-00002.safetensors": shard(1),
        "model-00002-of-00002.safetensors": shard(2),
        "model.safetensors.index.json": json.dumps(index).encode(),
        "tokenizer.model.v3": b"sentencepiece bytes",
        "tokenizer_config.json": b"{}",
        # Mistral's own format and repo chrome: never downloaded.
        "consolidated.safetensors": save_safetensors({"all": torch.zeros(256, 256)}),
        "params.json": b'{"dim": 4096}',
        "README.md": b"# tiny",
    }


NEEDED = {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model.v3",
          "tokenizer_config.json"}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running local hub with a public repo and a gated one; HF_ENDPOINT points at it."""
    import huggingface_hub.constants

    files = _checkpoint_files()
    repos = {"acme/tiny": Repo(dict(files)),
             "acme/gated": Repo(dict(files), gated=True, allowed_tokens={TOKEN_OK})}
    with LocalHub(repos, valid_tokens={TOKEN_OK, TOKEN_NO_ACCESS}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # huggingface_hub read HF_HUB_OFFLINE once, at import: whatever the shell said then, go online.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        # No token stored by a developer's `huggingface-cli login` may leak into "anonymous" requests.
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
        yield server


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_public_repo_downloads_only_pipeline_files_pinned_to_the_commit(hub, ws):
    source = resolve_source(ws, "acme/tiny", progress=False)  # a hub id goes through fetch.download

    repo = hub.repos["acme/tiny"]
    assert source.model_id == "acme/tiny"
    assert source.revision == repo.sha and source.path.name == repo.sha
    assert source.path.is_relative_to(ws.hub_cache)
    assert {p.name for p in source.path.iterdir()} == NEEDED
    assert sorted(hub.downloaded()) == sorted(NEEDED)  # consolidated.safetensors never crossed the wire
    assert source.files == {name: hashlib.sha256(repo.files[name]).hexdigest() for name in sorted(NEEDED)}


def test_a_pinned_commit_and_a_missing_revision(hub, ws):
    sha = hub.repos["acme/tiny"].sha
    assert download(ws, "acme/tiny", sha, progress=False).revision == sha
    with pytest.raises(TrtbuildError, match=r"revision 'v9' does not exist in acme/tiny: pass a branch"):
        download(ws, "acme/tiny", "v9", progress=False)


def test_gated_repo_without_a_token_says_to_accept_the_terms(hub, ws):
    with pytest.raises(TrtbuildError) as err:
        download(ws, "acme/gated", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"accept its terms at {hub.url}/acme/gated and set HF_TOKEN" in message
    assert any("/acme/gated/resolve/" in path for _, path, _ in hub.requests)  # it was the file, not the info


def test_gated_repo_with_a_token_that_never_accepted(hub, ws, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN_NO_ACCESS)
    with pytest.raises(TrtbuildError, match="acme/gated is a gated repository: accept its terms"):
        download(ws, "acme/gated", progress=False)


def test_gated_repo_downloads_with_hf_token_or_an_explicit_token(hub, ws, monkeypatch):
    assert download(ws, "acme/gated", token=TOKEN_OK, progress=False).revision == hub.repos["acme/gated"].sha
    monkeypatch.setenv("HF_TOKEN", TOKEN_OK)
    source = download(Workspace(ws.root / "second"), "acme/gated", progress=False)
    assert {p.name for p in source.path.iterdir()} == NEEDED


def test_missing_repo(hub, ws):
    with pytest.raises(TrtbuildError, match=r"repository acme/nothing not found on the hub .*check the id"):
        download(ws, "acme/nothing", progress=False)


def test_bad_token(hub, ws, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_typo")
    with pytest.raises(TrtbuildError, match=r"the hub rejected the token \(401 Unauthorized\): set HF_TOKEN"):
        download(ws, "acme/tiny", progress=False)


def test_offline_uses_the_cache_after_a_download(hub, ws, monkeypatch):
    online = download(ws, "acme/tiny", progress=False)
    hub.stop()  # the hub is gone: only the cache can answer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = download(ws, "acme/tiny", progress=False)
    assert (offline.path, offline.revision, offline.files) == (online.path, online.revision, online.files)


def test_offline_with_nothing_cached(hub, ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrtbuildError, match=r"acme/tiny@main is not in the cache .* HF_HUB_OFFLINE=1 forbids"):
        download(ws, "acme/tiny", progress=False)
    assert hub.requests == []


def test_no_network_and_not_cached(hub, ws):
    hub.stop()  # connection refused from now on
    with pytest.raises(TrtbuildError, match=r"no network and acme/tiny@main is not in the cache"):
        download(ws, "acme/tiny", progress=False)


def test_an_interrupted_download_resumes_with_a_range_request(hub, ws):
    data = hub.repos["acme/tiny"].files["model-00001-of-00002.safetensors"]
    blobs = ws.hub_cache / "models--acme--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{hashlib.sha256(data).hexdigest()}.incomplete").write_bytes(data[:1000])

    source = download(ws, "acme/tiny", progress=False)

    assert (source.path / "model-00001-of-00002.safetensors").read_bytes() == data
    ranges = [r for method, path, r in hub.requests
              if method == "GET" and path.endswith("model-00001-of-00002.safetensors")]
    assert ranges == ["bytes=1000-"]


# --- local directories -----------------------------------------------------------------------------------

def test_a_local_checkpoint_directory_is_used_in_place(tmp_path, ws):
    for name, data in _checkpoint_files().items():
        (tmp_path / name).write_bytes(data)
    source = resolve_source(ws, str(tmp_path))
    assert source.path == tmp_path.resolve() and source.revision is None
    assert set(source.files) == NEEDED
    assert source.files["config.json"] == hashlib.sha256((tmp_path / "config.json").read_bytes()).hexdigest()
    assert type(source).from_dict(json.loads(json.dumps(source.to_dict()))) == source


@pytest.mark.parametrize("remove, message", [
    ("config.json", "is not a Hugging Face checkpoint (no config.json)"),
    ("model-00002-of-00002.safetensors", "lacks model-00002-of-00002.safetensors: the download is incomplete"),
])
def test_a_broken_local_checkpoint_is_a_clear_error(tmp_path, ws, remove, message):
    for name, data in _checkpoint_files().items():
        if name != remove:
            (tmp_path / name).write_bytes(data)
    with pytest.raises(TrtbuildError, match=re.escape(message)):
        resolve_source(ws, str(tmp_path))


def test_model_ids_that_are_neither(ws, tmp_path):
    with pytest.raises(TrtbuildError, match="neither a directory nor a hub id"):
        resolve_source(ws, "no such thing")
    with pytest.raises(TrtbuildError, match="unknown builtin model"):
        resolve_source(ws, "builtin:tiny-llama")
    with pytest.raises(TrtbuildError, match="applies to hub models only"):
        resolve_source(ws, str(tmp_path), revision="abc")
