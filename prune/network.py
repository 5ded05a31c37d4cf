"""Is the Hugging Face Hub reachable? One quick answer per process, shared by model and data loading.

Without it, a machine with no network waits ~26 s in huggingface_hub's retries (and prints every retry
warning) before a Hub id or a Hub dataset fails. `hub_unreachable` says so at once: True when the user set
``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` (or ``HF_DATASETS_OFFLINE`` for data), else the result of one TCP connection to the
Hub's host with a short timeout, cached for the process. Behind a proxy (``HTTPS_PROXY``) the direct
probe means nothing, so the Hub is assumed reachable and huggingface_hub decides.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")
# What huggingface_hub and transformers honour for models; datasets also honours its own variable.
MODEL_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DATA_OFFLINE_VARIABLES = (*MODEL_OFFLINE_VARIABLES, "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 2.0


def offline_variable(*, datasets: bool = False) -> str | None:
    """The environment variable that turns the Hub off, if one is set: the one offline check of the
    package (models read `MODEL_OFFLINE_VARIABLES`, data also ``HF_DATASETS_OFFLINE``).

    Example:
        >>> offline_variable() in (None, *DATA_OFFLINE_VARIABLES)
        True
    """
    names = DATA_OFFLINE_VARIABLES if datasets else MODEL_OFFLINE_VARIABLES
    return next((name for name in names if os.environ.get(name, "").strip().lower() in _TRUE), None)


def offline_by_env(*, datasets: bool = False) -> bool:
    """True when the environment says to stay offline (see `offline_variable`).

    Example:
        >>> isinstance(offline_by_env(), bool)
        True
    """
    return offline_variable(datasets=datasets) is not None


def _hub_host() -> tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"
    parsed = urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)


@functools.cache
def _probe_failed() -> bool:
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    try:
        with socket.create_connection(_hub_host(), timeout=PROBE_TIMEOUT_S):
            return False
    except OSError:  # no route, no DNS, refused, timed out: all mean the Hub cannot be used now
        return True


def hub_unreachable(*, datasets: bool = False) -> bool:
    """True when the Hub cannot be used: offline by the environment, or one quick probe failed.

    Args:
        datasets: also honour ``HF_DATASETS_OFFLINE`` (for Hub datasets).

    Example:
        >>> isinstance(hub_unreachable(), bool)  # doctest: +SKIP
        True
    """
    return offline_by_env(datasets=datasets) or _probe_failed()


def offline_reason(*, datasets: bool = False) -> str:
    """Why the Hub is not used, in words, for error messages."""
    name = offline_variable(datasets=datasets)
    if name is not None:
        return f"you are offline ({name} is set; set {name}=0 to use the Hub)"
    host, _ = _hub_host()
    return f"this machine is offline ({host} cannot be reached)"
