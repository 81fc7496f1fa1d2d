"""Loading a BERT-family checkpoint (local directory or Hugging Face hub id).

Security defaults: safetensors only (pickle weights are opt-in through
``allow_pickle``) and ``trust_remote_code=False`` always, so loading a model
never executes code shipped with it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import (
    MissingModelFileError,
    ModelLoadError,
    ModelNotAvailableError,
    PickleCheckpointError,
    TaskMismatchError,
)

__all__ = ["LoadedModel", "load_model", "detect_task", "TASKS", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

from ..models import DEFAULT_MODEL  # noqa: E402
TASKS = ("embed", "fill-mask", "sequence-classification", "token-classification")

_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# Files fetched from the hub: configs, tokenizer, weights (pickle only if allowed).
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class LoadedModel:
    """A model ready for inference, with its tokenizer and provenance.

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode, on CPU after loading (the encoder moves it). For
        ``task="embed"`` this is the bare encoder (e.g. ``BertModel``).
    tokenizer : transformers.PreTrainedTokenizerFast
    model_id : str
        The id or path as given.
    revision : str or None
        Resolved commit hash when known (hub snapshot), else the revision
        given, else ``"local"`` for a plain directory.
    task : str
        One of :data:`TASKS`.
    config : transformers.PretrainedConfig
    path : str
        Local directory the files were read from.
    """

    model: torch.nn.Module
    tokenizer: Any
    model_id: str
    revision: str | None
    task: str
    config: Any
    path: str = ""


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _download_hint(model: str) -> str:
    name = model.rsplit("/", 1)[-1]
    return (
        f"Download it once on a machine with hub access, e.g.\n"
        f"    huggingface-cli download {model} --local-dir /models/{name}\n"
        f"or in Python: huggingface_hub.snapshot_download('{model}', local_dir='/models/{name}'),\n"
        f"copy the directory to the cluster and pass its path (--model /models/{name})."
    )


def _pickle_hint(where: str) -> str:
    return (
        f"{where} has only pickle weights (pytorch_model.bin). Loading pickle can execute "
        "arbitrary code, so it is refused by default. Either pass allow_pickle=True "
        "(--allow-pickle) for a checkpoint you trust, or convert it once to safetensors: "
        "load it with transformers and call model.save_pretrained(dir) (writes "
        "model.safetensors), or use safetensors.torch.save_file(torch.load(bin), "
        "'model.safetensors'). On the hub a safetensors conversion may exist on a PR "
        "branch: pass revision='refs/pr/<N>'."
    )


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    """Raise a precise error if ``path`` lacks config, weights or tokenizer."""
    if not (path / "config.json").is_file():
        raise MissingModelFileError(f"model directory {path} has no config.json")
    if not any((path / f).is_file() for f in _SAFE_WEIGHTS):
        if any((path / f).is_file() for f in _PICKLE_WEIGHTS):
            if not allow_pickle:
                raise PickleCheckpointError(_pickle_hint(f"model directory {path}"))
        else:
            raise MissingModelFileError(
                f"model directory {path} has no weights: expected model.safetensors "
                "(or model.safetensors.index.json for sharded weights)"
                + ("" if not allow_pickle else " or pytorch_model.bin")
            )
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise MissingModelFileError(
            f"model directory {path} has no tokenizer: expected tokenizer.json or vocab.txt"
        )


def _resolve_hub(
    model: str, revision: str | None, allow_pickle: bool, offline: bool
) -> tuple[Path, str | None]:
    """Fetch (or find in the HF cache) a hub snapshot; return (dir, commit)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover
        raise ModelNotAvailableError(f"huggingface_hub is required to resolve {model!r}") from exc
    patterns = list(_HUB_PATTERNS) + (["*.bin"] if allow_pickle else [])
    try:
        path = Path(
            snapshot_download(
                model, revision=revision, allow_patterns=patterns, local_files_only=offline
            )
        )
    except LocalEntryNotFoundError as exc:
        why = (
            "offline mode (HF_HUB_OFFLINE=1 or local_files_only) and it is not in the local HF cache"
            if offline
            else "the hub could not be reached and it is not in the local HF cache"
        )
        raise ModelNotAvailableError(
            f"model {model!r} (revision {revision or 'main'}) is not available: {why}.\n"
            + _download_hint(model)
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotAvailableError(
            f"model {model!r} revision {revision or 'main'} not found on the hub "
            f"(or it is gated/private): {type(exc).__name__}"
        ) from exc
    except OSError as exc:
        raise ModelNotAvailableError(
            f"could not fetch model {model!r}: {exc}\n" + _download_hint(model)
        ) from exc
    commit = path.name if _COMMIT.match(path.name) else revision
    if not any((path / f).is_file() for f in _SAFE_WEIGHTS + (_PICKLE_WEIGHTS if allow_pickle else ())):
        if not allow_pickle:
            # *.bin was deliberately not fetched; hub BERT checkpoints without
            # safetensors (Bio_ClinicalBERT's main branch) are pickle-only.
            raise PickleCheckpointError(
                _pickle_hint(f"hub model {model!r} (revision {revision or 'main'})")
                + " (no model.safetensors found in this revision)"
            )
    return path, commit


def _local_commit(path: Path, revision: str | None) -> str | None:
    if revision:
        return revision
    # A directory inside the HF cache (".../snapshots/<commit>") names its commit.
    if _COMMIT.match(path.name) and path.parent.name == "snapshots":
        return path.name
    return "local"


def _read_config_json(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {path / 'config.json'}: {exc}") from exc


def _task_from_architectures(architectures: list[str] | None) -> str:
    for arch in architectures or ():
        if arch.endswith("ForMaskedLM") or arch.endswith("ForPreTraining"):
            return "fill-mask"
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
        if arch.endswith("ForTokenClassification"):
            return "token-classification"
    return "embed"


def _task_from_weight_names(path: Path) -> str:
    """Guess the task from safetensors tensor names (header only, no weights read).

    Used when ``config.json`` has no ``architectures`` (older checkpoints such
    as Bio_ClinicalBERT, converted from TF): an MLM head shows up as
    ``cls.predictions.*``.
    """
    names: list[str] = []
    index = path / "model.safetensors.index.json"
    try:
        if index.is_file():
            names = list(json.loads(index.read_text()).get("weight_map", {}))
        elif (path / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(path / "model.safetensors"), framework="pt") as f:
                names = list(f.keys())
    except Exception:  # unreadable header: fall back to "embed"
        logger.debug("could not read weight names in %s", path, exc_info=True)
    if any(n.startswith("cls.predictions.") for n in names):
        return "fill-mask"
    return "embed"


def detect_task(model_dir_or_id: str | os.PathLike, revision: str | None = None) -> str:
    """Infer the task a checkpoint was trained for from ``config.architectures``.

    Parameters
    ----------
    model_dir_or_id : str or path
        Local model directory, or hub id (resolved like :func:`load_model`,
        fetching only ``config.json``).
    revision : str, optional
        Hub revision.

    Returns
    -------
    task : str
        ``"fill-mask"`` for ``*ForMaskedLM`` / ``*ForPreTraining``,
        ``"sequence-classification"``, ``"token-classification"``, else
        ``"embed"`` (plain ``BertModel``). Without an ``architectures``
        field, a local safetensors checkpoint holding ``cls.predictions.*``
        weights is ``"fill-mask"``.
    """
    path = Path(model_dir_or_id).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # pragma: no cover
            raise ModelNotAvailableError(str(exc)) from exc
        try:
            cfg_file = hf_hub_download(
                str(model_dir_or_id), "config.json", revision=revision,
                local_files_only=_offline(None),
            )
        except Exception as exc:
            raise ModelNotAvailableError(
                f"cannot read config of {str(model_dir_or_id)!r}: {type(exc).__name__}\n"
                + _download_hint(str(model_dir_or_id))
            ) from exc
        path = Path(cfg_file).parent
    if not (path / "config.json").is_file():
        raise MissingModelFileError(f"model directory {path} has no config.json")
    architectures = _read_config_json(path).get("architectures")
    if not architectures:
        return _task_from_weight_names(path)
    return _task_from_architectures(architectures)


def _auto_class(task: str):
    import transformers

    return {
        "embed": transformers.AutoModel,
        "fill-mask": transformers.AutoModelForMaskedLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
    }[task]


def _quiet_transformers():
    """transformers 5 prints a load report table and progress bars on every load; each Spark
    worker would repeat them. Missing/unexpected keys are checked from loading_info instead."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)

    return ctx()


def _from_pretrained(cls, path: Path, task: str, allow_pickle: bool, **extra):
    with _quiet_transformers():
        return _from_pretrained_inner(cls, path, task, allow_pickle, **extra)


def _from_pretrained_inner(cls, path: Path, task: str, allow_pickle: bool, **extra):
    kwargs = dict(
        use_safetensors=None if allow_pickle else True,
        trust_remote_code=False,
        output_loading_info=True,
        local_files_only=True,
        **extra,
    )
    try:
        return cls.from_pretrained(str(path), attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError, NotImplementedError) as exc:
        if "sdpa" not in str(exc).lower() and "attn" not in str(exc).lower():
            raise
        # Architecture without an SDPA kernel: eager attention is correct, just slower.
        logger.info("SDPA unsupported for %s; falling back to eager attention", path)
        return cls.from_pretrained(str(path), attn_implementation="eager", **kwargs)


def load_model(
    model: str | os.PathLike = DEFAULT_MODEL,
    revision: str | None = None,
    task: str = "embed",
    allow_pickle: bool = False,
    local_files_only: bool | None = None,
) -> LoadedModel:
    """Load a model and its fast tokenizer for inference.

    Parameters
    ----------
    model : str or path, default="emilyalsentzer/Bio_ClinicalBERT"
        Local directory, or hub id (resolved through the HF cache; downloaded
        when online).
    revision : str, optional
        Hub branch, tag, commit or ``"refs/pr/<N>"``.
    task : {"embed", "fill-mask", "sequence-classification", "token-classification", "auto"}
        ``"embed"`` loads the bare encoder (from any BERT checkpoint, heads
        dropped). The head tasks load the matching ``AutoModelFor*`` and
        require the checkpoint to contain that head's trained weights.
        ``"auto"`` uses :func:`detect_task`.
    allow_pickle : bool, default=False
        Permit ``pytorch_model.bin`` weights (unpickling runs code; only for
        trusted checkpoints). Safetensors are preferred when both exist.
    local_files_only : bool, optional
        Never touch the network. Default: true when ``HF_HUB_OFFLINE`` is set.

    Returns
    -------
    loaded : LoadedModel

    Raises
    ------
    ModelNotAvailableError
        Hub id not resolvable (offline and not cached, no network, unknown
        repo/revision). The message says how to download it once.
    MissingModelFileError
        Local directory without config.json / weights / tokenizer.
    PickleCheckpointError
        Only pickle weights and ``allow_pickle`` is false.
    TaskMismatchError
        A head task on a checkpoint without that head.
    """
    from transformers import AutoConfig, AutoTokenizer

    if task not in TASKS + ("auto",):
        raise ValueError(f"task must be one of {TASKS + ('auto',)}, got {task!r}")
    model_id = str(model)
    path = Path(model_id).expanduser()
    if path.is_dir():
        _check_local_dir(path, allow_pickle)
        resolved = _local_commit(path.resolve(), revision)
    elif path.is_absolute() or model_id.startswith((".", "~")) or not _HUB_ID.match(model_id):
        raise MissingModelFileError(f"model directory {model_id} does not exist")
    else:
        path, resolved = _resolve_hub(model_id, revision, allow_pickle, _offline(local_files_only))
        _check_local_dir(path, allow_pickle)

    if task == "auto":
        task = detect_task(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), use_fast=True, trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:
        raise ModelLoadError(f"could not load tokenizer from {path}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"tokenizer in {path} is not a fast tokenizer (offsets are required)")

    extra = {}
    if task == "embed" and getattr(config, "model_type", None) in ("bert", "roberta", "xlm-roberta"):
        extra["add_pooling_layer"] = False  # we pool ourselves; skips an unused dense layer
    try:
        net, info = _from_pretrained(_auto_class(task), path, task, allow_pickle, **extra)
    except OSError as exc:
        raise ModelLoadError(f"could not load weights from {path}: {exc}") from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if not _ignorable_missing(k))
    if missing:
        if task != "embed":
            raise TaskMismatchError(
                f"checkpoint {model_id} has no trained {task} head (missing {len(missing)} "
                f"weights, e.g. {missing[:3]}); detected task: {detect_task(path)}. Use "
                "task='embed' or a fine-tuned checkpoint."
            )
        raise ModelLoadError(
            f"checkpoint {model_id} lacks {len(missing)} encoder weights (e.g. {missing[:3]}); "
            "refusing to run with randomly initialised layers"
        )
    net.eval()
    net.requires_grad_(False)
    return LoadedModel(
        model=net,
        tokenizer=tokenizer,
        model_id=model_id,
        revision=resolved,
        task=task,
        config=config,
        path=str(path),
    )


def _ignorable_missing(key: str) -> bool:
    # Buffers some checkpoints omit (recreated deterministically), and the
    # pooler, which we never use.
    return key.endswith("position_ids") or ".pooler." in f".{key}" or key.startswith("pooler.")
