"""Task heads: fill-mask, sequence classification, token classification (NER).

All character offsets are relative to the input text (the Spark glue adds the
sentence's offset within its note).
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .batching import assign_windows, build_segments
from .device import autocast_context, resolve_device, resolve_precision, sdpa_backends
from .encoder import EncoderConfig, _special_ids
from .model import LoadedModel
from .runtime import DEFAULT_MAX_TOKENS, EncodeStats, _Budget, classify_texts, run_batches, tokenize_texts

__all__ = [
    "Predictor",
    "TokenCandidate",
    "MaskPrediction",
    "FillMaskResult",
    "SequenceClassification",
    "Entity",
    "TokenClassification",
]


class _AsDict:
    def to_dict(self) -> dict:
        """Nested plain dict (lists and dicts only), e.g. for a Spark Row."""
        return asdict(self)


@dataclass(frozen=True)
class TokenCandidate(_AsDict):
    """One vocabulary candidate for a masked position."""

    token: str  # vocabulary piece, e.g. "pain" or "##s"
    token_id: int
    score: float  # softmax probability over the vocabulary


@dataclass(frozen=True)
class MaskPrediction(_AsDict):
    """Top-k candidates for one mask token at ``text[start:end]``."""

    start: int
    end: int
    candidates: list  # of TokenCandidate, best first


@dataclass
class FillMaskResult(_AsDict):
    """Fill-mask output for one row. ``status``: ok / no_mask / empty_text / ..."""

    status: str
    masks: list = field(default_factory=list)  # of MaskPrediction, in text order
    truncated: bool = False


@dataclass
class SequenceClassification(_AsDict):
    """Label of one row; ``probabilities`` maps every label name to its probability."""

    status: str
    label: str | None = None
    score: float | None = None
    probabilities: dict = field(default_factory=dict)
    truncated: bool = False


@dataclass(frozen=True)
class Entity(_AsDict):
    """An entity span ``text[start:end]`` (word aligned)."""

    start: int
    end: int
    label: str  # entity type without the B-/I- prefix, e.g. "PROBLEM"
    score: float  # mean over the entity's words of the chosen label's probability
    text: str


@dataclass
class TokenClassification(_AsDict):
    """Entities found in one row, in text order."""

    status: str
    entities: list = field(default_factory=list)
    truncated: bool = False


def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-DRUG"`` -> ("B", "DRUG"); ``"O"`` -> ("O", ""); untagged -> ("I", tag)."""
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIESL":
        prefix = {"E": "I", "L": "I", "S": "B"}.get(tag[0], tag[0])
        return prefix, tag[2:]
    return "I", tag


class Predictor:
    """Run a task head over texts.

    Parameters
    ----------
    loaded : LoadedModel
        Loaded with ``task`` "fill-mask", "sequence-classification" or
        "token-classification".
    config : EncoderConfig, optional
        ``max_length``, ``stride``, ``long_policy``, ``max_tokens``,
        ``pad_to_multiple_of`` and ``precision`` apply as for embeddings;
        pooling options are ignored. Long texts are windowed: token-level
        outputs come from the window where the token has most context;
        sequence probabilities are averaged over windows.
    top_k : int, default=5
        Fill-mask candidates per mask.
    device : str or torch.device, optional

    Notes
    -----
    ``predict`` returns one result object per row (``.to_dict()`` for plain
    dicts). Bad rows get a result with a non-"ok" status, never an exception.
    Statistics of the last call are in :attr:`last_stats`.
    """

    def __init__(self, loaded: LoadedModel, config: EncoderConfig | None = None, top_k: int = 5, device=None):
        if loaded.task == "embed":
            raise ValueError("Predictor needs a head task; use SentenceEncoder for embeddings")
        self.loaded = loaded
        self.task = loaded.task
        self.config = config or EncoderConfig()
        self.top_k = int(top_k)
        self.device = device if isinstance(device, torch.device) else resolve_device(device or "auto")
        self.dtype = resolve_precision(self.config.precision, self.device)
        self.model = loaded.model.to(self.device).eval()
        self.tokenizer = loaded.tokenizer
        self.cls_id, self.sep_id, self.pad_id = _special_ids(self.tokenizer)
        self.mask_id = self.tokenizer.mask_token_id
        id2label = getattr(loaded.config, "id2label", None) or {}
        n_labels = int(getattr(loaded.config, "num_labels", len(id2label)) or len(id2label))
        self.labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n_labels)]
        self.multi_label = getattr(loaded.config, "problem_type", None) == "multi_label_classification"
        self.budget = _Budget(self.config.max_tokens or DEFAULT_MAX_TOKENS.get(self.device.type, 8192))
        self.last_stats = EncodeStats()
        self._lock = threading.Lock()
        if self.task == "fill-mask" and self.mask_id is None:
            raise ValueError("tokenizer has no mask token")

    # -- forward passes --------------------------------------------------
    def _logits(self, input_ids, attention_mask, select=None):
        with autocast_context(self.device, self.dtype), sdpa_backends(self.device):
            if select is not None and hasattr(self.model, "cls"):
                # BERT MLM: run the vocabulary projection only at mask
                # positions; full [B, L, 30522] logits would cost ~1 GB per
                # 8k-token batch for nothing.
                hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
                return self.model.cls(hidden[select]).float()
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return (logits[select] if select is not None else logits).float()

    def _run(self, seg, step_fn, stats):
        with self._lock, torch.inference_mode():
            run_batches(
                seg,
                budget=self.budget,
                pad_multiple=self.config.pad_to_multiple_of,
                pad_id=self.pad_id,
                device=self.device,
                step=step_fn,
                stats=stats,
            )

    def predict(self, texts: Sequence[Any]) -> list:
        """Predict for each text; returns a list aligned with ``texts``.

        Returns
        -------
        results : list of FillMaskResult, SequenceClassification or TokenClassification
        """
        t0 = time.perf_counter()
        texts = list(texts)
        status = classify_texts(texts)
        ids, encs = tokenize_texts(self.tokenizer, texts, status, offsets=True)
        if self.task == "fill-mask":
            for i, row in enumerate(ids):
                if row is not None and self.mask_id not in row:
                    status[i], ids[i] = "no_mask", None
        cfg = self.config
        seg = build_segments(
            ids,
            max_length=cfg.max_length,
            stride=cfg.effective_stride,
            long_policy=cfg.long_policy,
            cls_id=self.cls_id,
            sep_id=self.sep_id,
        )
        stats = EncodeStats(rows=len(texts), segments=len(seg))
        handler = {
            "fill-mask": self._fill_mask,
            "sequence-classification": self._classify,
            "token-classification": self._tag,
        }[self.task]
        results = handler(texts, status, ids, encs, seg, stats)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return results

    # -- tasks ------------------------------------------------------------
    def _fill_mask(self, texts, status, ids, encs, seg, stats):
        window = self.config.max_length - 2
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # segment -> (top ids, top probs) per mask
        k = self.top_k

        def step(index, input_ids, attention_mask):
            select = input_ids == self.mask_id
            probs = torch.softmax(self._logits(input_ids, attention_mask, select), dim=-1)
            top = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)
            top_p, top_i = top.values.cpu().numpy(), top.indices.cpu().numpy()
            counts = select.sum(dim=1).cpu().numpy()
            o = 0
            for s, c in zip(index, counts):
                out[int(s)] = (top_i[o : o + c], top_p[o : o + c])
                o += c

        if len(seg):
            self._run(seg, step, stats)
        results = [FillMaskResult(status=s) for s in status]
        seg_of_row = _segments_by_row(seg)
        for r, segs in seg_of_row.items():
            content = np.asarray(ids[r])
            choice = assign_windows(len(content), seg.start[segs], window)
            offsets = encs[r].offsets
            masks = []
            for pos in np.flatnonzero(content == self.mask_id):
                w = choice[pos]
                if w < 0:
                    continue  # cut by truncation
                s = segs[w]
                # rank of this mask among the masks of its segment
                seg_content = seg.ids[s][1:-1]
                rank = int(np.count_nonzero(seg_content[: pos - seg.start[s]] == self.mask_id))
                top_i, top_p = out[s]
                cands = [
                    TokenCandidate(token=self.tokenizer.convert_ids_to_tokens(int(t)), token_id=int(t), score=float(p))
                    for t, p in zip(top_i[rank], top_p[rank])
                ]
                masks.append(MaskPrediction(start=int(offsets[pos][0]), end=int(offsets[pos][1]), candidates=cands))
            results[r] = FillMaskResult(status="ok", masks=masks, truncated=bool(seg.truncated[r]))
        return results

    def _classify(self, texts, status, ids, encs, seg, stats):
        seg_probs = np.zeros((len(seg), len(self.labels)), dtype=np.float64)

        def step(index, input_ids, attention_mask):
            logits = self._logits(input_ids, attention_mask)
            p = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            seg_probs[index] = p.cpu().numpy()

        if len(seg):
            self._run(seg, step, stats)
        results = [SequenceClassification(status=s) for s in status]
        for r, segs in _segments_by_row(seg).items():
            p = seg_probs[segs].mean(axis=0)  # average over windows
            best = int(p.argmax())
            results[r] = SequenceClassification(
                status="ok",
                label=self.labels[best],
                score=float(p[best]),
                probabilities={lab: float(v) for lab, v in zip(self.labels, p)},
                truncated=bool(seg.truncated[r]),
            )
        return results

    def _tag(self, texts, status, ids, encs, seg, stats):
        window = self.config.max_length - 2
        seg_probs: dict[int, np.ndarray] = {}

        def step(index, input_ids, attention_mask):
            probs = torch.softmax(self._logits(input_ids, attention_mask), dim=-1).cpu().numpy()
            for row, s in enumerate(index):
                seg_probs[int(s)] = probs[row, 1 : int(seg.lengths[s]) - 1]  # content positions only

        if len(seg):
            self._run(seg, step, stats)
        results = [TokenClassification(status=s) for s in status]
        for r, segs in _segments_by_row(seg).items():
            n = len(ids[r])
            choice = assign_windows(n, seg.start[segs], window)
            probs = np.full((n, len(self.labels)), np.nan)
            for w, s in enumerate(segs):
                pos = np.flatnonzero(choice == w)
                probs[pos] = seg_probs[s][pos - seg.start[s]]
            entities = self._aggregate(texts[r], encs[r], probs)
            results[r] = TokenClassification(status="ok", entities=entities, truncated=bool(seg.truncated[r]))
        return results

    def _aggregate(self, text: str, enc, probs: np.ndarray) -> list:
        """Word pieces -> words -> BIO entities ("simple" grouping on words).

        A word's label is the argmax of its pieces' mean probabilities, so an
        entity always starts and ends on word boundaries; consecutive words
        merge while the tag is I-<same type> (or B- starts a new entity).
        """
        word_ids = enc.word_ids
        offsets = enc.offsets
        words: list[tuple[int, int, np.ndarray]] = []  # (char start, char end, mean probs)
        i, n = 0, len(word_ids)
        while i < n:
            j = i
            while j + 1 < n and word_ids[j + 1] is not None and word_ids[j + 1] == word_ids[i]:
                j += 1
            piece = probs[i : j + 1]
            piece = piece[~np.isnan(piece).any(axis=1)]  # tokens cut by truncation
            if len(piece):
                words.append((offsets[i][0], offsets[j][1], piece.mean(axis=0)))
            i = j + 1
        entities, cur = [], None
        for start, end, p in words:
            best = int(p.argmax())
            bio, typ = _split_tag(self.labels[best])
            if bio == "O":
                if cur:
                    entities.append(cur)
                cur = None
                continue
            if bio == "B" or cur is None or cur[2] != typ:
                if cur:
                    entities.append(cur)
                cur = [start, end, typ, [float(p[best])]]
            else:
                cur[1] = end
                cur[3].append(float(p[best]))
        if cur:
            entities.append(cur)
        return [
            Entity(start=int(s), end=int(e), label=t, score=float(np.mean(sc)), text=text[s:e])
            for s, e, t, sc in entities
        ]


def _segments_by_row(seg) -> dict[int, np.ndarray]:
    """Row -> its segment indices (contiguous, in text order)."""
    if not len(seg.row):
        return {}
    bounds = np.flatnonzero(np.diff(seg.row)) + 1
    groups = np.split(np.arange(len(seg.row)), bounds)
    return {int(seg.row[g[0]]): g for g in groups}
