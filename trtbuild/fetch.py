"""Download a checkpoint from the Hugging Face hub: only what the Hugging Face pipeline reads.

huggingface_hub does the work (it resumes partial downloads, verifies sizes, draws progress bars, keeps
a content-addressed cache). This module chooses the files, pins the revision to the commit it resolved
to, reads HF_ENDPOINT / HF_HUB_OFFLINE at call time (huggingface_hub reads them once, at import), and
turns the hub's exceptions into one-line messages that say what to do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from trtbuild.errors import TrtbuildError
from trtbuild.models import PIPELINE_FILES, SourceModel, local_source
from trtbuild.workspace import Workspace

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def download(ws: Workspace, repo_id: str, revision: str | None = None, *, token: str | None = None,
             progress: bool = True) -> SourceModel:
    """The pipeline files of repo_id at revision (default: main), from ws.hub_cache or the hub.

    The token is `token`, else HF_TOKEN, else the one `huggingface-cli login` stored. With
    HF_HUB_OFFLINE=1 only the cache is used. The SourceModel's revision is the commit sha."""
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        with _progress_bars(progress):
            folder = snapshot_download(
                repo_id, revision=revision, cache_dir=ws.hub_cache, allow_patterns=list(PIPELINE_FILES),
                token=token or None, local_files_only=offline, endpoint=hub_endpoint())
    except Exception as exc:
        raise TrtbuildError(hub_error_message(exc, repo_id, revision, offline, ws.hub_cache)) from None
    folder = Path(folder)  # .../snapshots/<commit sha>
    return local_source(folder, model_id=repo_id, revision=folder.name)


def hub_error_message(exc: Exception, repo_id: str, revision: str | None, offline: bool, cache: Path) -> str:
    """One line saying what went wrong and what to do, for each way a download fails."""
    import requests
    from huggingface_hub import errors

    page = f"{hub_endpoint()}/{repo_id}"
    at = f"{repo_id}@{revision or 'main'}"
    if isinstance(exc, errors.GatedRepoError):
        return (f"{repo_id} is a gated repository: accept its terms at {page} and set HF_TOKEN to a token "
                "of that account (https://huggingface.co/settings/tokens)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return (f"revision {revision!r} does not exist in {repo_id}: pass a branch, tag or commit sha "
                f"from {page}/commits/main")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (f"repository {repo_id} not found on the hub ({hub_endpoint()}): check the id; if it is private, "
                "set HF_TOKEN to a token with access to it")
    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return ("the hub rejected the token (401 Unauthorized): set HF_TOKEN to a valid token from "
                    "https://huggingface.co/settings/tokens, or unset it for public models")
        if status == 403:
            return (f"the token has no access to {repo_id} (403 Forbidden): request access at {page} "
                    "or use another token")
        return f"the hub answered {status} for {at}: try again later (downloads resume where they stopped)"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        if offline:
            return (f"{at} is not in the cache {cache} and HF_HUB_OFFLINE=1 forbids downloading: run "
                    f"`trtbuild fetch {repo_id}` on a machine with network first, or unset HF_HUB_OFFLINE")
        return (f"no network and {at} is not in the cache {cache}: connect to the internet (or set HF_ENDPOINT "
                "to a reachable mirror) and run the command again")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return f"network error while downloading {at}: run the command again (the download resumes)"
    if isinstance(exc, OSError):
        return f"cannot write the download of {at} into {cache}: {exc}; free disk space or pick another --workspace"
    return f"download of {at} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """huggingface_hub's tqdm bars on or off for one call (its switch is global)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()
