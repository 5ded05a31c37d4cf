"""Push a pruned model folder to the Hugging Face Hub, with its model card.

The local folder is never deleted or moved: when the push fails (no token, offline, no permission), the
error says where the model is and how to push it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from prune.errors import HubError

__all__ = ["push_to_hub"]

_DEFAULT_MESSAGE = "Upload layer-pruned model (prune-llm)"


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    card: object | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload `folder` to the Hub model repo `repo_id` and return the repo's URL.

    Creates the repo when it does not exist (as private when asked), creates the branch `revision` when
    given and missing, writes the model card to ``README.md`` in the folder and uploads the folder in
    one commit.

    Args:
        folder: the saved model (``save_pretrained`` output, report included).
        repo_id: ``"user/name"`` or ``"org/name"``.
        private: create the repo as private (an existing repo keeps its visibility).
        revision: branch to push to (default: the repo's main branch).
        token: a Hugging Face token; default: the one from ``hf auth login`` or ``HF_TOKEN``.
        card: a `huggingface_hub.ModelCard` (or Markdown text) written as ``README.md`` before upload.
        commit_message: message of the commit on the Hub.

    Returns:
        The URL of the repo (of the branch, when `revision` is given).

    Raises:
        HubError: no token, the Hub is unreachable or offline mode is on, or the token may not write to
            the repo; the message says the folder is kept and how to fix it.

    Example:
        >>> push_to_hub("pruned-minilm", "me/minilm-l6-pruned", private=True)  # doctest: +SKIP
        'https://huggingface.co/me/minilm-l6-pruned'
    """
    import huggingface_hub

    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"cannot push {folder}: no such folder; save the model first (pass --out)")
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise HubError(f"invalid Hub repo id {repo_id!r}; write it as 'user/name' or 'org/name'")
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError(
            f"no Hugging Face token: run `hf auth login` or set HF_TOKEN; the model is saved in {folder}"
        )
    if card is not None:
        # str(card) of a ModelCard is its full text, front matter included
        (folder / "README.md").write_text(str(card), encoding="utf-8")

    api = huggingface_hub.HfApi(token=token)
    with _explained_errors(folder, repo_id):
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or _DEFAULT_MESSAGE,
        )
    url = str(url).rstrip("/")
    return f"{url}/tree/{revision}" if revision else url


@contextlib.contextmanager
def _explained_errors(folder: Path, repo_id: str) -> Iterator[None]:
    """Turn the Hub's network and permission errors into one-line `HubError`s that keep the folder."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = f"the model is kept in {folder}"
    retry = f"push it again with `hf upload {repo_id} {folder}`"
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(
            f"cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1); {kept}; unset HF_HUB_OFFLINE and {retry}"
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise HubError(
                f"the Hub rejected the token (401); {kept}; run `hf auth login` with a valid token and {retry}"
            ) from None
        if status == 403:
            raise HubError(
                f"no permission to write to {repo_id} (403); {kept}; use a token with write access to it "
                f"(or a repo under your own name) and {retry}"
            ) from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(
            f"the Hub refused the push ({first_line}); {kept}; fix the cause and {retry}"
        ) from None
    except (ConnectionError, TimeoutError, OSError) as err:
        raise HubError(
            f"cannot reach the Hugging Face Hub ({type(err).__name__}: {err}); {kept}; check the network and {retry}"
        ) from None
    except Exception as err:
        # httpx2's transport errors do not derive from OSError
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
            raise HubError(
                f"cannot reach the Hugging Face Hub ({type(err).__name__}: {err}); {kept}; check the network and {retry}"
            ) from None
        raise
