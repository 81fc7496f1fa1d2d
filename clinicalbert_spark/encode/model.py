"""Loading a BERT-family checkpoint (local directory or Hugging Face hub id).

Security: loading a model never executes code shipped with it.

* ``model.safetensors`` is preferred whenever it exists (transformers reads it,
  ``use_safetensors=True``).
* A pickle-only checkpoint (``pytorch_model.bin``, e.g. Bio_ClinicalBERT's main
  branch) is read by this module with torch's weights-only unpickler
  (``torch.load(..., weights_only=True)``: tensors and plain containers only, no
  code runs) and handed to ``from_pretrained(None, config=..., state_dict=...)``, so
  transformers never opens the pickle itself. A pickle that needs anything more
  (a ``__reduce__`` calling a function, a pickled module, numpy objects) is refused
  with :class:`PickleCheckpointError`. There is no way to opt into full unpickling:
  ``torch.load`` is only ever called with ``weights_only=True``.
* ``trust_remote_code=False`` always; model classes come from transformers' own
  mapping.

``allow_pickle`` is deprecated and has no effect (weights-only loading needs no
opt-in; full unpickling is never allowed).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
import zipfile
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

__all__ = ["LoadedModel", "load_model", "load_pickle_state_dict", "check_pickle_weights",
           "detect_task", "TASKS", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

from ..models import DEFAULT_MODEL  # noqa: E402
TASKS = ("embed", "fill-mask", "sequence-classification", "token-classification")

_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# Files fetched from the hub: configs, tokenizer, safetensors weights; the pickle weights
# only when a revision has no safetensors (never other *.bin files such as
# training_args.bin, which need full unpickling).
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_HUB_PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin"]
_SHARD_NAME = re.compile(r"^[\w.\-]+\.bin$")
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
        f"    hf download {model} --local-dir /models/{name}\n"
        f"(huggingface-cli download with huggingface_hub < 1.0)\n"
        f"or in Python: huggingface_hub.snapshot_download('{model}', local_dir='/models/{name}'),\n"
        f"copy the directory to the cluster and pass its path (--model /models/{name})."
    )


_warned_allow_pickle = False


def warn_allow_pickle(allow_pickle: bool) -> None:
    """Log once per process that ``allow_pickle`` no longer does anything."""
    global _warned_allow_pickle
    if allow_pickle and not _warned_allow_pickle:
        _warned_allow_pickle = True
        logger.warning(
            "allow_pickle (--allow-pickle) is deprecated and has no effect: pytorch_model.bin "
            "loads by default with torch's weights-only unpickler, and a pickle that needs "
            "full unpickling is always refused")


def _unsafe_pickle_message(file: Path, exc: BaseException) -> str:
    # torch's message is many lines and advises allow-listing; keep only the culprit's name.
    m = re.search(r"GLOBAL ([\w.]{1,200})", str(exc))
    what = f"it references {m.group(1)}" if m else "it holds more than tensors"
    return (
        f"refusing {file}: it needs full unpickling ({what}), which can run code; "
        "pickle checkpoints load with torch's weights-only unpickler (tensors only). "
        "Use a checkpoint of plain tensors, or its safetensors version from a source you "
        "trust (on the hub a conversion may be on a PR branch: revision refs/pr/<N>)"
    )


def _pickle_files(path: Path) -> list[Path]:
    """The ``pytorch_model*.bin`` files of a pickle-only checkpoint (shards from the index)."""
    index = path / "pytorch_model.bin.index.json"
    if not index.is_file():
        return [path / "pytorch_model.bin"]
    try:
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"could not read {index}: {type(exc).__name__}") from exc
    bad = [n for n in names if not isinstance(n, str) or not _SHARD_NAME.match(n)]
    if bad or not names:
        raise ModelLoadError(f"{index} names no usable shard files (plain *.bin names in {path})")
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise MissingModelFileError(f"model directory {path} lacks weight shard {missing[0]}")
    return [path / n for n in names]


def _torch_load_weights_only(file: Path) -> dict:
    """``torch.load(file, weights_only=True)``: tensors only, no code runs.

    Memory-maps zip-format files (``torch.save`` since 1.6), so validating a checkpoint
    reads little. Raises :class:`PickleCheckpointError` (one line) for a pickle that needs
    full unpickling, :class:`ModelLoadError` for an unreadable file or one that is not a
    flat ``{name: tensor}`` state dict.
    """
    try:
        mmap = zipfile.is_zipfile(file)
        sd = torch.load(str(file), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise PickleCheckpointError(_unsafe_pickle_message(file, exc)) from exc
    except Exception as exc:  # truncated or corrupt file
        raise ModelLoadError(f"could not read weights {file}: {type(exc).__name__}") from exc
    if not isinstance(sd, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ModelLoadError(
            f"{file} is not a state dict of tensors (a {type(sd).__name__}); save the weights "
            "with model.save_pretrained(dir)")
    return sd


def load_pickle_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a pickle-only checkpoint folder, read with the weights-only unpickler.

    Parameters
    ----------
    path : str or path
        Folder holding ``pytorch_model.bin`` (or ``pytorch_model.bin.index.json`` and
        its shards).

    Returns
    -------
    state_dict : dict of str to torch.Tensor

    Raises
    ------
    PickleCheckpointError
        A file needs full unpickling (it would run code); nothing in it was executed.
    """
    sd: dict[str, torch.Tensor] = {}
    for file in _pickle_files(Path(path)):
        sd.update(_torch_load_weights_only(file))
    return sd


# (file, size, mtime_ns) -> weight names, for pickle files already checked in this process.
_CHECKED_PICKLES: dict[tuple[str, int, int], list[str]] = {}


def check_pickle_weights(path: str | os.PathLike) -> list[str]:
    """Check that a pickle-only checkpoint loads weights-only; return its weight names.

    Used on the driver (preflight) so an unsafe pickle is one clear error before any task
    starts. Zip-format files are memory-mapped, so little is read; results are memoised
    per file (path, size, mtime).
    """
    names: list[str] = []
    for file in _pickle_files(Path(path)):
        st = file.stat()
        key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _CHECKED_PICKLES:
            _CHECKED_PICKLES[key] = list(_torch_load_weights_only(file))
        names.extend(_CHECKED_PICKLES[key])
    return names


def _weights_format(path: Path) -> str | None:
    """``"safetensors"`` (preferred), ``"pickle"`` or None (no weights)."""
    if any((path / f).is_file() for f in _SAFE_WEIGHTS):
        return "safetensors"
    if any((path / f).is_file() for f in _PICKLE_WEIGHTS):
        return "pickle"
    return None


def _check_local_dir(path: Path, allow_pickle: bool = False) -> None:
    """Raise a precise error if ``path`` lacks config, weights or tokenizer.

    Only checks that the files are there; :func:`check_pickle_weights` checks a pickle's
    content. ``allow_pickle`` is ignored (deprecated).
    """
    if not (path / "config.json").is_file():
        raise MissingModelFileError(f"model directory {path} has no config.json")
    if _weights_format(path) is None:
        raise MissingModelFileError(
            f"model directory {path} has no weights: expected model.safetensors "
            "(or model.safetensors.index.json for sharded weights) or pytorch_model.bin"
        )
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise MissingModelFileError(
            f"model directory {path} has no tokenizer: expected tokenizer.json or vocab.txt"
        )


def _resolve_hub(
    model: str, revision: str | None, offline: bool
) -> tuple[Path, str | None]:
    """Fetch (or find in the HF cache) a hub snapshot; return (dir, commit).

    Fetches configs, tokenizer and safetensors; only when the revision has no safetensors,
    ``pytorch_model*.bin`` too (a second call pinned to the commit the first resolved).
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover
        raise ModelNotAvailableError(f"huggingface_hub is required to resolve {model!r}") from exc
    try:
        path = Path(
            snapshot_download(
                model, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=offline
            )
        )
        if _weights_format(path) is None:
            # Pickle-only revision (Bio_ClinicalBERT's main branch): fetch its weights.
            pinned = path.name if _COMMIT.match(path.name) else revision
            path = Path(
                snapshot_download(
                    model, revision=pinned, allow_patterns=_HUB_PATTERNS + _HUB_PICKLE_PATTERNS,
                    local_files_only=offline,
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
    if _weights_format(path) is None:
        raise MissingModelFileError(
            f"hub model {model!r} (revision {revision or 'main'}) has no weights in {path} "
            "(model.safetensors or pytorch_model.bin)"
            + ("; offline, so only the local HF cache was read" if offline else ""))
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
        elif (path / "pytorch_model.bin.index.json").is_file():
            names = list(json.loads(
                (path / "pytorch_model.bin.index.json").read_text()).get("weight_map", {}))
        elif (path / "pytorch_model.bin").is_file():
            names = check_pickle_weights(path)  # weights-only, memory-mapped
    except PickleCheckpointError:
        raise
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
        field, a checkpoint holding ``cls.predictions.*`` weights is
        ``"fill-mask"`` (names read from the safetensors header, or from a
        pickle with the weights-only unpickler).
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


def _from_pretrained(cls, path: Path, config, **extra):
    with _quiet_transformers():
        return _from_pretrained_inner(cls, path, config, **extra)


def _from_pretrained_inner(cls, path: Path, config, **extra):
    kwargs = dict(
        trust_remote_code=False,
        output_loading_info=True,
        local_files_only=True,
        **extra,
    )
    if _weights_format(path) == "safetensors":
        # transformers reads the safetensors itself (memory-mapped); never a .bin. The config
        # given is used (fine-tuning passes one with its own labels).
        source, kwargs["use_safetensors"] = str(path), True
        kwargs["config"] = config
    else:
        # Pickle only: we unpickle weights-only and hand over the tensors, so transformers
        # opens no pickle. from_pretrained(None, state_dict=...) needs the concrete class
        # (built-in mapping from the config type; no remote code can be involved) and
        # still applies its key renames (LayerNorm gamma/beta, base-model prefix).
        from transformers.models.auto.auto_factory import _get_model_class

        try:
            cls = _get_model_class(config, cls._model_mapping)
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(
                f"no built-in {cls.__name__} class for model type "
                f"{getattr(config, 'model_type', None)!r} in {path}") from exc
        source = None
        kwargs.update(config=copy.deepcopy(config), state_dict=load_pickle_state_dict(path),
                      use_safetensors=False)
    try:
        return cls.from_pretrained(source, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError, NotImplementedError) as exc:
        if "sdpa" not in str(exc).lower() and "attn" not in str(exc).lower():
            raise
        # Architecture without an SDPA kernel: eager attention is correct, just slower.
        logger.info("SDPA unsupported for %s; falling back to eager attention", path)
        return cls.from_pretrained(source, attn_implementation="eager", **kwargs)


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
        Deprecated, no effect (logs a warning once when true). Safetensors are
        preferred when present; a pickle-only checkpoint (``pytorch_model.bin``)
        loads with torch's weights-only unpickler by default, and one that needs
        full unpickling is always refused.
    local_files_only : bool, optional
        Never touch the network. Default: true when ``HF_HUB_OFFLINE`` is set.
        Executors pass a local folder resolved on the driver and ``True``.

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
        Pickle weights that need full unpickling (they would run code); nothing
        in them was executed.
    TaskMismatchError
        A head task on a checkpoint without that head.
    """
    from transformers import AutoConfig, AutoTokenizer

    if task not in TASKS + ("auto",):
        raise ValueError(f"task must be one of {TASKS + ('auto',)}, got {task!r}")
    warn_allow_pickle(allow_pickle)
    model_id = str(model)
    path = Path(model_id).expanduser()
    if path.is_dir():
        _check_local_dir(path)
        resolved = _local_commit(path.resolve(), revision)
    elif path.is_absolute() or model_id.startswith((".", "~")) or not _HUB_ID.match(model_id):
        raise MissingModelFileError(f"model directory {model_id} does not exist")
    else:
        path, resolved = _resolve_hub(model_id, revision, _offline(local_files_only))
        _check_local_dir(path)

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
        net, info = _from_pretrained(_auto_class(task), path, config, **extra)
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
