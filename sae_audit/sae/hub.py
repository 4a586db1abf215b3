"""Moving SAEs through the Hugging Face hub: ``push_to_hub`` and pinned loading.

- :func:`push_to_hub` (also :meth:`SAE.push_to_hub <sae_audit.sae.base.SAE.push_to_hub>`):
  save the SAE in the native format with its model card
  (:func:`sae_audit.sae.card.model_card`, the card ``save_pretrained`` and
  ``sae-audit train`` write too) to a temporary folder and upload it with
  ``HfApi.upload_folder`` to ``repo_id`` (optionally under ``subfolder``,
  optionally as a pull request).
- Loading: :func:`sae_audit.sae.load_sae` takes ``org/name``,
  ``org/name/sub/folder`` and a ``revision`` (branch, tag or commit hash), or
  the same spec with ``@REVISION`` appended (``org/name/k32@3f2a...``); it goes
  through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` works from a warm one.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from sae_audit.errors import SaeAuditError, is_network_error

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def push_to_hub(
    sae,
    repo_id: str,
    subfolder: str | None = None,
    create_pr: bool = False,
    *,
    metrics: dict[str, Any] | None = None,
    card: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    api=None,
):
    """Upload ``sae`` (native format + model card) to the hub repository ``repo_id``.

    Args:
        sae: any :class:`~sae_audit.sae.SAE`.
        repo_id: ``org/name``; created (as a model repository) when missing.
        subfolder: path inside the repository (several SAEs can share one repository).
        create_pr: open a pull request instead of committing to ``revision``.
        metrics: numbers for the card's metadata (ignored when ``card`` is given).
        card: the whole README.md text; default ``sae.model_card(metrics)``
            (:func:`sae_audit.sae.card.model_card`).
        revision: branch to commit to (default the main branch).
        api: an object with ``create_repo`` and ``upload_folder`` like
            ``huggingface_hub.HfApi`` (default ``HfApi(token=token)``).
    Returns:
        What ``upload_folder`` returns (a ``CommitInfo`` for the real hub).
    Raises:
        SaeAuditError: a malformed ``repo_id`` or ``subfolder``, or a hub error
            (no token, no permission, no network).
        sae_audit.plugin_manager.PluginError: a plugin's card-metadata hook failed.
    """
    if not _REPO_ID_RE.match(repo_id or ""):
        raise SaeAuditError(f"repo_id {repo_id!r} must look like 'org/name'")
    if subfolder is not None:
        subfolder = subfolder.strip("/")
        if not subfolder or ".." in subfolder.split("/"):
            raise SaeAuditError(f"subfolder {subfolder!r} must be a relative path inside the repository")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    text = card if card is not None else sae.model_card(metrics)
    from huggingface_hub.errors import HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="sae-audit-push-") as tmp:
        folder = sae.write_files(Path(tmp) / "sae", readme=text)  # a private folder: no manifest, no swap
        try:
            api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), path_in_repo=subfolder, repo_type="model",
                revision=revision, create_pr=create_pr,
                commit_message=commit_message or f"Upload {sae.config.architecture} SAE (d_sae {sae.config.d_sae}, k {sae.config.k})",
            )
        except Exception as exc:  # noqa: BLE001 - the hub said no, or the network failed
            if not isinstance(exc, (HfHubHTTPError, ValueError)) and not is_network_error(exc):
                raise
            raise SaeAuditError(f"could not push the SAE to {repo_id!r}: {type(exc).__name__}: {exc}") from None
