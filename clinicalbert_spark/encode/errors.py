"""Exceptions raised by the encoder library.

Every error raised on purpose derives from :class:`EncodeError` so the Spark
glue can catch this library's failures without swallowing unrelated bugs.
Messages never contain note text (PHI); they name models, paths and files.
"""
from __future__ import annotations


class EncodeError(Exception):
    """Base class of every error this package raises deliberately."""


class ModelLoadError(EncodeError):
    """A model or tokenizer could not be loaded (bad directory, bad checkpoint)."""


class ModelNotAvailableError(ModelLoadError):
    """A hub model id could not be resolved: offline and not in the local cache,
    no network, unknown repository or unknown revision."""


class MissingModelFileError(ModelLoadError):
    """A local model directory lacks a required file (config, weights, tokenizer)."""


class PickleCheckpointError(ModelLoadError):
    """A pickle checkpoint (``pytorch_model.bin``) needs full unpickling: it references
    something other than tensors and plain containers (a ``__reduce__`` calling a function,
    a pickled class), so loading it could run code. Pickle weights load only through
    torch's weights-only unpickler; such a file is refused and nothing in it is executed.
    There is no opt-in (``allow_pickle`` is deprecated and has no effect). Like every
    :class:`EncodeError`, the jobs exit with code 5 (model error) for it."""


class TaskMismatchError(ModelLoadError):
    """The requested task needs a trained head the checkpoint does not contain."""
