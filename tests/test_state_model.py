"""Model-based test of the table state: every operation a hospital runs, in any order, leaves
every table equal to what a plain-Python model of the corpus says it must hold.

Operations: add notes, change a note, mark a note ISERROR, delete notes (snapshot), change
pooling / max length, full refresh, the stages run one by one as the DAG runs them, a crash at
an injected point followed by a re-run, the same run id again. After each step: sentences
equal the pure segmenter's output for exactly the current notes; embeddings have one row per
sentence and equal the pure encoder's vectors for the current settings; note vectors are the
means; rejects and runs add up. Parquet and Delta. ``--hypothesis-profile=long`` runs more.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from clinicalbert_spark.config import PipelineConfig
from clinicalbert_spark.pipeline import Pipeline
from clinicalbert_spark.state import SimulatedCrash

SENTENCES = [
    "Patient denies chest pain.", "No fever or cough.", "Aspirin daily was started.",
    "Mild abdominal tenderness.", "Heart rate normal.", "He was admitted to the icu.",
    "Blood pressure stable.", "Continued insulin twice daily.",
    "She reports shortness of breath with severe cough and fever for two days.",
]
HEADERS = ["History:", "Exam:", "Plan:"]
COLUMNS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CATEGORY", "ISERROR", "TEXT"]

settings.register_profile("long", max_examples=25, stateful_step_count=12, deadline=None,
                          suppress_health_check=list(HealthCheck))
# make test: one program of 6 steps per format, no shrinking (each step is a Spark run; the
# printed failing program is short anyway). Nightly: --hypothesis-profile=long.
PROFILE = settings(max_examples=1, stateful_step_count=6, deadline=None, database=None,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=list(HealthCheck))

texts = st.lists(st.tuples(st.sampled_from(HEADERS),
                           st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=3)),
                 min_size=1, max_size=2).map(
    lambda secs: "\n".join(h + "\n" + " ".join(ss) for h, ss in secs))

_CTX: dict = {}


def _read(root: Path, name: str, fmt: str) -> pd.DataFrame:
    p = root / name
    if fmt == "delta":
        return DeltaTable(str(p)).to_pandas() if (p / "_delta_log").is_dir() else pd.DataFrame()
    return pd.read_parquet(p) if p.is_dir() else pd.DataFrame()


class TableStateMachine(RuleBasedStateMachine):
    fmt = "parquet"

    def __init__(self):
        super().__init__()
        self.spark, tmp = _CTX["spark"], _CTX["tmp"]
        self.dir = Path(tmp) / f"m{_CTX.setdefault('n', 0)}"
        _CTX["n"] += 1
        self.root = self.dir / "out"
        self.corpus: dict[str, str] = {}  # the notes every table must reflect
        self.iserror: set[str] = set()  # ids whose latest delivery is ISERROR = 1
        self.next_id = 100
        self.run_no = 0
        self.pooling, self.max_length = "mean", 128
        self.last: tuple | None = None  # the last run's arguments, for "same run id again"

    # ------------------------------------------------------------------ running
    def _write_input(self, rows: list[tuple[str, str, str]]) -> Path:
        self.run_no += 1
        path = self.dir / f"in{self.run_no}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for nid, text, iserr in rows:
                w.writerow([nid, "7", "", "Discharge summary", iserr, text])
        return path

    def _cfg(self, path, run_id, delivery="upsert", full=False, stages=None):
        return PipelineConfig.model_validate({
            "input": {"path": str(path), "delivery": delivery},
            "encode": {"model": _CTX["model"], "pooling": self.pooling,
                       "max_length": self.max_length, "max_tokens": 512},
            "output": {"root": str(self.root), "format": self.fmt},
            "run": {"run_id": run_id, "full_refresh": full, "max_delete_fraction": 1.0,
                    "stages": stages or ["segment", "embed", "aggregate"]},
        })

    def _run(self, rows, delivery="upsert", full=False, split=False, crash=None):
        path = self._write_input(rows)
        run_id = f"r{self.run_no}"
        self.last = (path, run_id, delivery, full)
        stage_sets = [["segment"], ["embed"], ["aggregate"]] if split else [None]
        if crash:
            os.environ["CBS_INJECT_CRASH"] = crash
            try:
                for stages in stage_sets:
                    Pipeline(self._cfg(path, run_id, delivery, full, stages), self.spark).run()
            except SimulatedCrash:
                pass
            finally:
                os.environ.pop("CBS_INJECT_CRASH", None)
        for stages in stage_sets:  # (again, after a crash: the recovery run)
            row = Pipeline(self._cfg(path, run_id, delivery, full, stages), self.spark).run()
            assert row["status"] == "succeeded"

    # ------------------------------------------------------------------ operations
    def _new_notes(self, texts_) -> list[tuple[str, str, str]]:
        rows = []
        for t in texts_:
            nid = str(self.next_id)
            self.next_id += 1
            self.corpus[nid] = t
            rows.append((nid, t, "0"))
        return rows

    @initialize(new=st.lists(texts, min_size=1, max_size=3))
    def first_delivery(self, new):
        self._run(self._new_notes(new))

    @rule(new=st.lists(texts, min_size=1, max_size=2), split=st.booleans())
    def add_notes(self, new, split):
        self._run(self._new_notes(new), split=split)

    @precondition(lambda self: self.corpus)
    @rule(data=st.data(), text=texts)
    def change_note(self, data, text):
        nid = data.draw(st.sampled_from(sorted(self.corpus)))
        self.corpus[nid] = text
        self._run([(nid, text, "0")])

    @precondition(lambda self: len(self.corpus) > 1)
    @rule(data=st.data())
    def mark_iserror(self, data):
        nid = data.draw(st.sampled_from(sorted(self.corpus)))
        text = self.corpus.pop(nid)
        self.iserror.add(nid)
        self._run([(nid, text, "1")])

    @precondition(lambda self: len(self.corpus) > 1)
    @rule(data=st.data())
    def snapshot_without_some(self, data):
        drop = data.draw(st.sets(st.sampled_from(sorted(self.corpus)), min_size=1,
                                 max_size=len(self.corpus) - 1))
        for nid in drop:
            del self.corpus[nid]
        self.iserror.clear()  # a snapshot's rejects are that snapshot's only
        self._run([(n, t, "0") for n, t in sorted(self.corpus.items())], "snapshot")

    @rule(pooling=st.sampled_from(["mean", "cls"]), max_length=st.sampled_from([16, 128]))
    def change_settings(self, pooling, max_length):
        self.pooling, self.max_length = pooling, max_length
        some = sorted(self.corpus)[:1]  # an upsert delivery that changes no note
        self._run([(n, self.corpus[n], "0") for n in some])

    @rule()
    def full_refresh(self):
        self.iserror.clear()
        self._run([(n, t, "0") for n, t in sorted(self.corpus.items())], "snapshot", full=True)

    @precondition(lambda self: self.corpus)
    @rule(data=st.data(), text=texts, split=st.booleans(),
          point=st.sampled_from(["after:segment", "after:embed", "commit:sentences:mid_swap",
                                 "commit:embeddings:before_journal",
                                 "commit:note_embeddings:mid_swap"]))
    def crash_then_rerun(self, data, text, split, point):
        nid = data.draw(st.sampled_from(sorted(self.corpus)))
        self.corpus[nid] = text
        new = str(self.next_id)
        self.next_id += 1
        self.corpus[new] = text + " Plan:\nAspirin daily."
        self._run([(nid, text, "0"), (new, self.corpus[new], "0")], split=split, crash=point)

    @precondition(lambda self: self.last is not None)
    @rule()
    def same_run_id_again(self):
        path, run_id, delivery, full = self.last
        row = Pipeline(self._cfg(path, run_id, delivery, full), self.spark).run()
        assert row["status"] == "succeeded" and row["sentences"] == 0

    # ------------------------------------------------------------------ the model
    @invariant()
    def tables_match_the_model(self):
        if self.run_no == 0:
            return
        from clinicalbert_spark.segment import get_segmenter

        seg = get_segmenter("rules")
        expected = {}
        for nid, text in self.corpus.items():
            for s in seg.segment(text):
                expected[(nid, s.sentence_index)] = (s.start, s.end, text[s.start:s.end])
        sent = _read(self.root, "sentences", self.fmt)
        got = {(r.note_id, r.sentence_index): (r.start, r.end, r.text)
               for r in sent.itertuples()}
        assert len(sent) == len(got), "two sentence rows for one key"
        assert got == expected
        assert sent.fingerprint.nunique() == 1

        emb = _read(self.root, "embeddings", self.fmt)
        assert len(emb) == len(expected), "embeddings: not one row per sentence"
        assert set(zip(emb.note_id, emb.sentence_index)) == set(expected)
        assert set(emb.pooling) == {self.pooling} and emb.fingerprint.nunique() == 1
        keys = sorted(expected)
        want = _CTX["encode"](self.pooling, self.max_length, [expected[k][2] for k in keys])
        e = emb.set_index(["note_id", "sentence_index"]).loc[keys]
        np.testing.assert_allclose(np.stack(e.embedding.to_numpy()), want, atol=2e-4)

        nv = _read(self.root, "note_embeddings", self.fmt)
        whole = nv[nv.section_category.isna()].set_index("note_id")
        assert len(whole) == len(set(whole.index)) == len(self.corpus)
        assert not nv.duplicated(["note_id", "section_category"]).any()
        for nid in self.corpus:
            rows = [i for i, k in enumerate(keys) if k[0] == nid]
            np.testing.assert_allclose(whole.loc[nid].embedding, want[rows].mean(axis=0),
                                       atol=2e-4)

        rej = _read(self.root, "rejects", self.fmt)
        got_rej = set(rej.note_id[rej.reason == "iserror"]) if len(rej) else set()
        assert got_rej == self.iserror
        runs = _read(self.root, "runs", self.fmt)
        assert not runs.duplicated(["run_id", "stages"]).any()
        assert set(runs.status) <= {"succeeded", "crashed"}
        assert not list(self.root.glob("*/_staging")) and not list(self.root.glob("*/_trash"))


class DeltaTableStateMachine(TableStateMachine):
    fmt = "delta"


@pytest.fixture(scope="module")
def model_ctx(spark, tiny_bert, tmp_path_factory):
    from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model

    loaded = load_model(tiny_bert, None, task="embed")
    cache = {}

    def encode(pooling, max_length, texts_):
        key = (pooling, max_length)
        if key not in cache:
            cache[key] = SentenceEncoder(loaded, EncoderConfig(
                pooling=pooling, max_length=max_length, max_tokens=512), device="cpu")
        return cache[key].encode(texts_).embeddings.astype(np.float32)

    _CTX.update(spark=spark, tmp=tmp_path_factory.mktemp("state"), model=tiny_bert,
                encode=encode)
    yield _CTX
    _CTX.clear()


@pytest.mark.parametrize("machine", [TableStateMachine, DeltaTableStateMachine],
                         ids=["parquet", "delta"])
def test_tables_follow_the_model(model_ctx, machine, request):
    profile = request.config.getoption("--hypothesis-profile", default=None)
    run_state_machine_as_test(machine, settings=None if profile == "long" else PROFILE)
