"""One typed configuration object for every job.

Values come, in increasing priority, from the defaults below, the YAML files given with
``--config`` (merged in order), the dedicated flags of a job (``--input``, ``--model`` ...)
and ``--set section.key=value`` / ``--section.key value`` overrides. Every key is
overridable on the command line: the parser is generated from the model fields.

    >>> cfg = load_config(["--config", "conf/default.yaml", "--encode.pooling", "mean"])
    >>> cfg.encode.pooling
    'mean'
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError  # re-exported: the historical import path

from .models import DEFAULT_MODEL  # noqa: E402  (re-exported)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    """Where notes come from and which columns hold what (defaults: MIMIC-III NOTEEVENTS)."""

    path: Optional[str] = None
    format: Literal["auto", "csv", "parquet", "delta", "table"] = "auto"
    id_column: str = "ROW_ID"
    text_column: str = "TEXT"
    subject_column: Optional[str] = "SUBJECT_ID"
    hadm_column: Optional[str] = "HADM_ID"
    category_column: Optional[str] = "CATEGORY"
    iserror_column: Optional[str] = "ISERROR"
    encoding: str = "UTF-8"
    # Notes longer than this are rejected ("too_large") rather than risk an executor.
    max_note_chars: int = Field(default=20_000_000, gt=0)
    # How the source delivers notes (docs/tables.md "State model"):
    #   upsert   - each input holds new and changed notes; a note absent from it is kept
    #   snapshot - each input is the whole corpus; a note absent from it is deleted everywhere
    delivery: Literal["upsert", "snapshot"] = "upsert"


class SentenceColumns(_Section):
    """Which columns of a sentences table the embed and predict jobs read (any table: one
    written by another tool needs only an id, an index and the text; ``note_hash``, offsets
    and section are used when present, else null, the hash then taken of the text)."""

    id_column: str = "note_id"
    index_column: str = "sentence_index"
    text_column: str = "text"


class SegmentConfig(_Section):
    backend: str = "rules"
    include_text: bool = True  # sentence text is PHI: --no-text leaves it out of the tables


class EncodeConfig(_Section):
    model: str = DEFAULT_MODEL
    revision: Optional[str] = None
    pooling: Literal["cls", "mean"] = "mean"  # MLM-only encoders: mean beats [CLS]
    normalize: bool = False
    max_length: int = Field(default=128, ge=8, le=512)
    stride: Optional[int] = None  # window overlap in tokens; None: the encoder's default
    long_policy: Literal["window", "truncate"] = "window"
    max_tokens: Optional[int] = Field(default=None, gt=0)  # token budget per batch; None: by device
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    embedding_dtype: Literal["float32", "float16"] = "float32"
    # How the tables store each vector (clinicalbert_spark/vectors.py, docs/tables.md):
    # float32 array, float16 packed in binary (half the bytes), or int8 + a per-vector scale
    # (a quarter). embedding_dtype float16 only rounds the values and still stores float32.
    vector_storage: Literal["float32", "float16", "int8"] = "float32"
    compile: bool = False
    # Deprecated, no effect: pytorch_model.bin loads weights-only by default; full unpickling
    # (code) is never allowed.
    allow_pickle: bool = False
    device: str = "auto"


class PredictConfig(_Section):
    enabled: bool = False
    model: Optional[str] = None  # None: the encode model
    revision: Optional[str] = None
    task: Literal["auto", "fill-mask", "sequence-classification", "token-classification"] = "auto"
    top_k: int = Field(default=5, ge=1, le=100)


class OutputConfig(_Section):
    path: Optional[str] = None  # a single job's output table
    root: Optional[str] = None  # the pipeline's folder of tables
    format: Literal["parquet", "delta"] = "parquet"
    mode: Literal["overwrite", "append", "error"] = "overwrite"


class SparkConfig(_Section):
    master: Optional[str] = None  # None: spark-submit's choice, else local[*]
    # Spark Connect server (sc://host:port); None: $SPARK_REMOTE, else a classic session.
    remote: Optional[str] = None
    app_name: str = "clinicalbert-spark"
    # Rows per Arrow batch sent to the Python UDFs (segmentation and encoding).
    arrow_batch_size: int = Field(default=2000, gt=0)
    partitions: Optional[int] = Field(default=None, gt=0)  # repartition notes/sentences first
    # Private (0700) scratch space for Spark's spill and temp files, which hold note text.
    # None: $CBS_SCRATCH_DIR, else <system temp>/clinicalbert-spark-<uid>.
    scratch_dir: Optional[str] = None
    conf: dict[str, str] = Field(default_factory=dict)


class RunConfig(_Section):
    run_id: Optional[str] = None
    # Drop every row under the output root and rebuild from this input alone.
    full_refresh: bool = False
    # Another run holding the output root: wait this long for it, then refuse (exit 75).
    lock_wait_s: float = Field(default=0.0, ge=0)
    # A lock whose owner has not refreshed it for this long is taken over (owner crashed).
    lock_stale_s: float = Field(default=600.0, gt=0)
    # Snapshot delivery: refuse a run that would delete more than this share of the notes
    # (a partial extract passed as a snapshot); --full-refresh or a higher value overrides.
    max_delete_fraction: float = Field(default=0.5, ge=0, le=1)
    # aggregate: note-level vectors (note_embeddings) from the sentence embeddings.
    stages: list[str] = Field(default_factory=lambda: ["segment", "embed", "aggregate"])

    @field_validator("stages", mode="before")
    @classmethod
    def _split_stages(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        allowed = {"segment", "embed", "predict", "aggregate"}
        bad = [s for s in v if s not in allowed]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; choose from {sorted(allowed)}")
        return v


class PipelineConfig(_Section):
    input: InputConfig = Field(default_factory=InputConfig)
    sentence_columns: SentenceColumns = Field(default_factory=SentenceColumns)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def predict_model(self) -> tuple[str, Optional[str]]:
        """(model, revision) of the predict stage: its own model, else the encoder's."""
        if self.predict.model:
            return self.predict.model, self.predict.revision
        return self.encode.model, self.predict.revision or self.encode.revision

    def config_hash(self) -> str:
        """A short stable hash of the settings that change results (not paths or Spark tuning)."""
        keep = self.model_dump(include={"segment", "encode", "predict"})
        blob = json.dumps(keep, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]




# --------------------------------------------------------------------------------------------
# Loading and merging


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
    cur[parts[-1]] = value


def _get_dotted(d: dict, dotted: str) -> dict:
    cur: Any = d
    for p in dotted.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    return cur if isinstance(cur, dict) else {}


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    return data


def _parse_scalar(text: str) -> Any:
    # YAML scalars: "true" -> True, "128" -> 128, "null" -> None, "a,b" stays a string.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_NULL_WORDS = ("null", "Null", "NULL", "~")
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _union_args(ann: Any) -> tuple[Any, ...]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return typing.get_args(ann)
    return (ann,)


def _is_text_type(ann: Any) -> bool:
    """``str`` or a ``Literal`` of strings."""
    if ann is str:
        return True
    if typing.get_origin(ann) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(ann))
    return False


def _text_field(ann: Any) -> tuple[bool, bool]:
    """(is the field text, may it be None): str, Optional[str], Literal["a", "b"] ..."""
    args = _union_args(ann)
    optional = type(None) in args
    rest = [a for a in args if a is not type(None)]
    return bool(rest) and all(_is_text_type(a) for a in rest), optional


def _annotation_of(dotted: str) -> Any:
    """The annotation of a dotted key; for a key inside a dict field, the dict's value type.

    None when the key is unknown (validation reports it).
    """
    model: Any = PipelineConfig
    parts = dotted.split(".")
    for i, name in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(name)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        rest = parts[i + 1:]
        if not rest:
            return ann
        args = [a for a in _union_args(ann) if a is not type(None)]
        if len(args) == 1 and typing.get_origin(args[0]) is dict:
            return typing.get_args(args[0])[1]  # spark.conf.<key> -> str
        return None
    return None


def _dict_field_key(dotted: str) -> tuple[str, str] | None:
    """``spark.conf.spark.executor.memory`` -> ("spark.conf", "spark.executor.memory"):
    the keys of a dict field (Spark settings) hold dots themselves."""
    for path, ann in _field_paths(PipelineConfig):
        if dotted.startswith(path + "."):
            args = [a for a in _union_args(ann) if a is not type(None)]
            if len(args) == 1 and typing.get_origin(args[0]) is dict:
                return path, dotted[len(path) + 1:]
    return None


def _cli_value(dotted: str, text: str, ann: Any = None) -> Any:
    """A command-line value for ``dotted``: text fields take it verbatim, others as YAML.

    ``--run-id 2024-01-01`` and ``--run-id 007`` stay strings (YAML would make a date and 7);
    ``null`` / ``~`` still mean None for an optional text field.
    """
    if ann is None:
        ann = _annotation_of(dotted)
    is_text, optional = _text_field(ann)
    if not is_text:
        numeric = {int, float} & set(_union_args(ann))
        if numeric and _DECIMAL.fullmatch(text.strip()):
            return int(text.strip())  # "064" is 64, not YAML 1.1's octal 52
        return _parse_scalar(text)
    if optional and text.strip() in _NULL_WORDS:
        return None
    return text


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_field_paths(ann, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", ann))
    return out


def _is_bool(ann: Any) -> bool:
    return ann is bool or (typing.get_origin(ann) is typing.Union and bool in typing.get_args(ann))


def build_parser(
    description: str | None = None, aliases: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with ``--config``, ``--set`` and one ``--section.key`` flag per field.

    ``aliases`` maps short job flags (``"--model"``) to dotted keys (``"encode.model"``).
    Boolean keys also get ``--no-section.key``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="configuration file(s), merged in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set encode.pooling=mean")
    g = p.add_argument_group("configuration keys")
    for dotted, ann in _field_paths(PipelineConfig):
        if _is_bool(ann):
            g.add_argument(f"--{dotted}", dest=dotted, action="store_const", const=True,
                           default=None)
            g.add_argument(f"--no-{dotted}", dest=dotted, action="store_const", const=False)
        else:
            g.add_argument(f"--{dotted}", dest=dotted, default=None, metavar="V")
    for flag, dotted in (aliases or {}).items():
        ann = dict(_field_paths(PipelineConfig))[dotted]
        if _is_bool(ann):
            p.add_argument(flag, dest=dotted, action="store_const", const=True, default=None,
                           help=f"same as --{dotted}")
        else:
            p.add_argument(flag, dest=dotted, default=None, metavar="V",
                           help=f"same as --{dotted}")
    return p


def config_from_args(ns: argparse.Namespace) -> PipelineConfig:
    data: dict = {}
    for path in ns.config or []:
        data = _deep_merge(data, read_yaml(path))
    for dotted, ann in _field_paths(PipelineConfig):
        v = getattr(ns, dotted, None)
        if v is not None:
            _set_dotted(data, dotted, _cli_value(dotted, v, ann) if isinstance(v, str) else v)
    for item in ns.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        value = _cli_value(k, v)
        in_dict = _dict_field_key(k)
        if in_dict:
            path, key = in_dict
            _set_dotted(data, path, {**_get_dotted(data, path), key: value})
        else:
            _set_dotted(data, k, value)
    return validate(data)


def validate(data: dict) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


def load_config(argv: list[str] | None = None, aliases: dict[str, str] | None = None,
                description: str | None = None) -> PipelineConfig:
    """Parse a job's command line into a :class:`PipelineConfig`."""
    ns = build_parser(description, aliases).parse_args(argv)
    return config_from_args(ns)
