"""A static HTML report of one pipeline run, for people to look at.

:func:`write_run_report` writes ``<root>/reports/<run_id>/report.html``: one self-contained
file (inline CSS, plots as base64 PNG ``data:`` URIs drawn with matplotlib's Agg canvas, no
JavaScript, no network) that opens from disk in any browser::

    from clinicalbert_spark.report import write_run_report
    path = write_run_report(spark, "/data/notes_out", "parquet", "2024-06-01", run_row)

Sections: run overview, counts, rejects by reason, time and throughput per stage, sentence
lengths in tokens (with the max-length line and the share of windowed and truncated
sentences), sections per note category, padding efficiency, and the model and settings
fingerprints. A section whose table does not exist (a segment-only run has no embeddings)
says "not run".

**PHI.** The report holds aggregates only: counts, timings, token-length histograms, category
and section-category names, reject *reason* names, model identifiers and settings. It never
reads a ``text`` or reject ``detail`` column, so no note or sentence text can reach the page.

The tables are read through :class:`~clinicalbert_spark.state.TableStore` with the DataFrame
API only, and only small aggregates are collected to the driver (no RDDs, no py4j), so this
works over Spark Connect as well as in classic mode.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .errors import ConfigError
from .schemas import PARTITION_COLUMN, SPECS
from .state import TableStore, local_path, sanitise_run_id

log = logging.getLogger(__name__)

__all__ = ["write_run_report", "report_path", "SECTION_IDS"]

#: The ``<section id=...>`` of every part of the report, in page order.
SECTION_IDS = ("overview", "counts", "rejects", "stages", "lengths", "categories", "padding",
               "fingerprints")

_STAGE_ORDER = ("segment", "embed", "predict", "aggregate")
_DEFAULT_MAX_LENGTH = 128
_MAX_CATEGORIES = 12  # heatmap columns (note categories); the rest are summed
_MAX_SECTIONS = 30  # heatmap rows (section categories); the rest are summed
_MAX_LABEL = 40  # characters of a category name shown


def report_path(root: str, run_id: str) -> Path:
    """Where :func:`write_run_report` writes the report of ``run_id`` under ``root``.

    Not under ``<root>/runs/``: that folder is the runs table (Parquet partitioned by
    ``run_id``), and a stray HTML file there would make ``spark.read.parquet(root/runs)``
    fail. ``reports/`` is not a table and no stage reads it.
    """
    return local_path(root.rstrip("/")) / "reports" / sanitise_run_id(run_id) / "report.html"


def write_run_report(spark: SparkSession, root: str, fmt: str, run_id: str,
                     run_row: dict | None = None) -> Path:
    """Write the HTML report of run ``run_id`` under output root ``root`` and return its path.

    Parameters
    ----------
    spark : SparkSession
        Any session (classic or Spark Connect) that can read the tables.
    root : str
        The output root (local or mounted path) holding the tables.
    fmt : str
        ``"parquet"`` or ``"delta"``, as the tables were written.
    run_id : str
        The run to report on (sanitised as the pipeline stores it).
    run_row : dict, optional
        The run's row of the runs table (columns of :data:`clinicalbert_spark.schemas.RUNS`),
        as :meth:`Pipeline.run` returns it. When ``None`` it is read from the runs table: the
        row of ``run_id`` with the most stages (the latest if several).

    Returns
    -------
    pathlib.Path
        ``<root>/reports/<run_id>/report.html``, written atomically (a temporary file in the
        same folder, then a rename): a reader sees the old report or the new one.
    """
    run_id = sanitise_run_id(run_id)
    # Absolute: over Spark Connect the server resolves relative paths against its own cwd.
    root = str(local_path(root.rstrip("/")).absolute())
    store = TableStore(spark, root, fmt, run_id)
    if run_row is None:
        run_row = _read_run_row(store, run_id)
    page = _Report(store, dict(run_row)).render()
    # Reports live beside the tables, never inside one: <root>/runs/ is the runs table
    # (Parquet partitioned by run_id) and a file there breaks spark.read.parquet(<root>/runs).
    path = report_path(root, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("run report: %s", path)
    return path


def _read_run_row(store: TableStore, run_id: str) -> dict:
    rows = []
    if store.exists("runs"):
        rows = [r.asDict() for r in store.read(SPECS["runs"])
                .where(F.col(PARTITION_COLUMN) == F.lit(run_id)).collect()]
    if not rows:
        raise ConfigError(f"no run {run_id!r} in the runs table under {store.root}")

    def rank(r: dict):
        stages = [s for s in (r.get("stages") or "").split(",") if s]
        when = r.get("ended_at") or r.get("started_at")
        return len(stages), _utc(when) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)

    return max(rows, key=rank)


# --------------------------------------------------------------------------------------------
# Formatting


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _num(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{float(v):,.{digits}f}"


def _pct(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return "—"
    return f"{100.0 * part / whole:.1f}%"


def _secs(v: float | None) -> str:
    if v is None:
        return "—"
    v = float(v)
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _utc(v: Any) -> dt.datetime | None:
    """A timestamp as aware UTC: the pipeline passes aware UTC datetimes; rows collected from
    Spark are naive in the driver's local time."""
    if not isinstance(v, dt.datetime):
        return None
    return v.astimezone(dt.timezone.utc)


def _when(v: Any) -> str:
    t = _utc(v)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else _e(v) or "—"


def _label(v: Any) -> str:
    s = "(none)" if v is None or v == "" else str(v)
    return s if len(s) <= _MAX_LABEL else s[:_MAX_LABEL - 1] + "…"


def _json(v: Any) -> dict:
    if isinstance(v, dict):
        return v
    if not v:
        return {}
    try:
        out = json.loads(v)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _not_run(why: str) -> str:
    return f'<p class="notrun"><strong>not run</strong>: {_e(why)}</p>'


def _kv_table(rows: list[tuple[str, str]]) -> str:
    """Rows of (label, already-escaped HTML value)."""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas on a Figure: no pyplot, no global backend switch, so a
# notebook's own backend is left alone)

_BLUE, _GREY, _RED, _ORANGE = "#2b6cb0", "#a0aec0", "#c53030", "#dd6b20"


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    return fig


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=9)
    ax.set_axisbelow(True)


def _png(fig, alt: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


# --------------------------------------------------------------------------------------------
# The report


class _Report:
    def __init__(self, store: TableStore, row: dict):
        self.store = store
        self.row = row
        self.run_id = store.run_id
        self.stages = [s for s in (row.get("stages") or "").split(",") if s]
        self.fps = _json(row.get("fingerprints"))
        self.seconds = {k: float(v) for k, v in _json(row.get("seconds_by_stage")).items()
                        if isinstance(v, (int, float))}
        self.exists = {name: store.exists(name) for name in SPECS}

    def _read(self, name: str) -> DataFrame:
        return self.store.read(SPECS[name])

    def _count(self, name: str) -> int | None:
        if not self.exists[name]:
            return None
        return int(self._read(name).agg(F.count(F.lit(1)).alias("n")).first()["n"] or 0)

    # ---------------------------------------------------------------- aggregates
    def _sentence_stats(self) -> dict | None:
        """Per (category, section_category): sentences, sections, notes; subtotals per category
        and overall (one rollup job)."""
        if not self.exists["sentences"]:
            return None
        df = self._read("sentences").select("note_id", "category", "section_category",
                                            "section_index")
        rows = (df.rollup("category", "section_category")
                .agg(F.count(F.lit(1)).alias("sentences"),
                     F.countDistinct("note_id", "section_index").alias("sections"),
                     F.countDistinct("note_id").alias("notes"),
                     F.grouping_id().alias("g"))
                .collect())
        cells, per_cat, total = [], {}, {"sentences": 0, "sections": 0, "notes": 0}
        for r in rows:
            vals = {"sentences": int(r["sentences"]), "sections": int(r["sections"]),
                    "notes": int(r["notes"])}
            if r["g"] == 0:
                cells.append((r["category"], r["section_category"], vals))
            elif r["g"] == 1:
                per_cat[r["category"]] = vals
            else:
                total = vals
        return {"cells": cells, "per_cat": per_cat, "total": total}

    def _embedding_stats(self) -> dict | None:
        """Token counts of the embeddings table, exact, in one grouped job: one-window
        sentences by ``n_tokens``, windowed ones by ``n_windows`` (a windowed row's
        ``n_tokens`` is ``n_windows * max_length``: its exact length is not stored)."""
        if not self.exists["embeddings"]:
            return None
        fp = (self.fps.get("embeddings") or {}).get("fingerprint")
        nw, nt = F.col("n_windows"), F.col("n_tokens")
        kind = (F.when(nw.isNull() | (nw <= 0), F.lit("empty")).when(nw > 1, F.lit("windowed"))
                .when(F.col("truncated"), F.lit("truncated")).otherwise(F.lit("one")))
        # The rows this run's settings made (after an embed stage that is all of them).
        cur = F.col("fingerprint").eqNullSafe(F.lit(fp)) if fp else F.lit(True)
        rows = (self._read("embeddings")
                .groupBy(cur.alias("cur"), kind.alias("kind"),
                         F.when(nw > 1, nw).when(nw > 0, nt).otherwise(F.lit(0)).alias("v"))
                .agg(F.count(F.lit(1)).alias("n")).collect())
        out: dict = {"rows_all": 0, "rows": 0, "empty": 0, "one": {}, "truncated": {},
                     "windowed": {}}
        for r in rows:
            n = int(r["n"])
            out["rows_all"] += n
            if not r["cur"]:
                continue
            out["rows"] += n
            if r["kind"] == "empty":
                out["empty"] += n
            else:
                d = out[r["kind"]]
                d[int(r["v"])] = d.get(int(r["v"]), 0) + n
        return out

    def _rejects(self) -> list[tuple[str, int, int]] | None:
        """(reason, rows in the table, rows of this run): reason names only, never details."""
        if not self.exists["rejects"]:
            return None
        rows = (self._read("rejects").groupBy("reason")
                .agg(F.count(F.lit(1)).alias("n"),
                     F.sum((F.col(PARTITION_COLUMN) == F.lit(self.run_id)).cast("long"))
                     .alias("mine"))
                .collect())
        return sorted(((r["reason"], int(r["n"]), int(r["mine"] or 0)) for r in rows),
                      key=lambda t: (-t[1], str(t[0])))

    # ---------------------------------------------------------------- sections
    def overview(self) -> str:
        r = self.row
        status = str(r.get("status") or "unknown")
        model = r.get("model")
        rev = r.get("model_revision")
        pmodel = ((self.fps.get("predictions") or {}).get("settings") or {}).get("model")
        rows = [
            ("Run id", f"<code>{_e(self.run_id)}</code>"
             + (f" (given as <code>{_e(r['run_id_given'])}</code>)"
                if r.get("run_id_given") not in (None, self.run_id) else "")),
            ("Status", f'<span class="status status-{_e(status)}">{_e(status)}</span>'),
            ("Stages", _e(", ".join(self.stages)) or "—"),
            ("Started", _when(r.get("started_at"))),
            ("Ended", _when(r.get("ended_at"))),
            ("Duration", _secs(r.get("seconds_total"))),
            ("Model", (f"<code>{_e(model)}</code>" if model else "— (no encoding stage)")),
            ("Model revision", f"<code>{_e(rev)}</code>" if rev else "—"),
        ]
        if pmodel:
            rows.append(("Prediction model", f"<code>{_e(pmodel)}</code>"))
        rows += [
            ("Config hash", f"<code>{_e(r.get('config_hash'))}</code>"),
            ("Delivery", _e(r.get("delivery")) + (", full refresh" if r.get("full_refresh")
                                                  else "")),
            ("Output", f"<code>{_e(self.store.root)}</code> ({_e(self.store.fmt)}, "
                       f"schema {_e(r.get('schema_version'))})"),
        ]
        return _kv_table(rows)

    def counts(self, sent: dict | None, emb: dict | None, rejects) -> str:
        r = self.row
        tables = {
            "sentences": sent["total"]["sentences"] if sent else None,
            "notes": sent["total"]["notes"] if sent else None,
            "embeddings": emb["rows_all"] if emb else None,
            "predictions": self._count("predictions"),
            "note_embeddings": self._count("note_embeddings"),
            "rejects": sum(n for _, n, _ in rejects) if rejects is not None else None,
        }
        lines = [
            ("input_records", "Input records", r.get("input_records"), None, "read from the input"),
            ("notes", "Notes", r.get("notes"), tables["notes"],
             "valid notes in the input; table: notes with sentences"),
            ("notes_segmented", "Notes segmented", r.get("notes_segmented"), None,
             "new or changed"),
            ("notes_unchanged", "Notes unchanged", r.get("notes_unchanged"), None, "skipped"),
            ("notes_deleted", "Notes deleted", r.get("notes_deleted"), None, "snapshot only"),
            ("sentences", "Sentences", r.get("sentences"), tables["sentences"],
             "run: rows added"),
            ("embedded", "Sentences embedded", r.get("sentences_embedded"),
             tables["embeddings"], "embeddings table"),
            ("predictions", "Predictions", r.get("predictions"), tables["predictions"],
             "predictions table"),
            ("note_vectors", "Note vectors", r.get("note_vectors"), tables["note_embeddings"],
             "note_embeddings table: per note and per section"),
            ("rejects", "Rejects", r.get("rejects"), tables["rejects"], "see below"),
        ]
        run_only = ("input_records", "notes_segmented", "notes_unchanged", "notes_deleted")

        def table_cell(key, tab):
            if key in run_only:
                return "—"
            return "not run" if tab is None else _num(tab)

        # Which stages ran: those with a time (a failed run's later stages have none).
        ran = set(self.seconds) or set(self.stages)
        stage_of = {"embedded": "embed", "predictions": "predict", "note_vectors": "aggregate"}

        def run_cell(key, run):
            return _num(run) if stage_of.get(key, "segment") in ran else "—"

        body = "".join(
            f'<tr id="count-{key}"><th>{_e(label)}</th>'
            f'<td class="num run">{run_cell(key, run)}</td>'
            f'<td class="num table">{table_cell(key, tab)}</td>'
            f'<td class="note">{_e(note)}</td></tr>'
            for key, label, run, tab, note in lines)
        return ('<table class="grid counts"><thead><tr><th></th><th class="num">This run</th>'
                '<th class="num">In the tables now</th><th></th></tr></thead>'
                f"<tbody>{body}</tbody></table>"
                '<p class="caption">"This run" counts what the run read and wrote (an '
                'incremental run adds only new and changed notes; "—": the stage was not part '
                'of this run); "in the tables now" counts the current rows of each table after '
                "the run.</p>")

    def rejects(self, rejects) -> str:
        if rejects is None:
            return _not_run("no rejects table under this output root (no segment stage yet)")
        if not rejects:
            return "<p>No rejected records.</p>"
        body = "".join(f'<tr data-reason="{_e(reason)}"><th><code>{_e(_label(reason))}</code>'
                       f'</th><td class="num">{_num(n)}</td><td class="num">{_num(mine)}</td>'
                       "</tr>" for reason, n, mine in rejects)
        total = sum(n for _, n, _ in rejects)
        return ('<table class="grid"><thead><tr><th>Reason</th><th class="num">In the table'
                '</th><th class="num">Rejected by this run</th></tr></thead>'
                f"<tbody>{body}</tbody><tfoot><tr><th>Total</th><td class=\"num\">"
                f"{_num(total)}</td><td class=\"num\">"
                f"{_num(sum(m for _, _, m in rejects))}</td></tr></tfoot></table>"
                '<p class="caption">Reason names only; the rejects table\'s <code>detail</code>'
                " column is not shown here.</p>")

    def stages_section(self) -> str:
        if not self.seconds:
            return _not_run("no stage of this run finished (a stage is timed when it ends)")
        r = self.row
        order = [s for s in _STAGE_ORDER if s in self.seconds] + sorted(
            s for s in self.seconds if s not in _STAGE_ORDER)
        work = {
            "segment": (r.get("notes_segmented"), "notes"),
            "embed": (r.get("sentences_embedded"), "sentences"),
            "predict": (r.get("predictions"), "rows"),
            "aggregate": (r.get("note_vectors"), "note vectors"),
        }
        total = r.get("seconds_total")
        other = None
        if total is not None:
            other = max(0.0, float(total) - sum(self.seconds.values()))
        names = order + (["other"] if other is not None else [])
        secs = [self.seconds[s] for s in order] + ([other] if other is not None else [])
        fig = _figure(8.5, 0.38 * len(names) + 0.9)
        ax = fig.add_subplot()
        _style(ax)
        y = list(range(len(names)))[::-1]
        colors = [_BLUE] * len(order) + ([_GREY] if other is not None else [])
        ax.barh(y, secs, color=colors, height=0.6)
        ax.set_yticks(y, names)
        ax.set_xlabel("seconds (wall clock)", fontsize=9)
        ax.grid(axis="x", color="#e2e8f0")
        top = max(secs) if secs and max(secs) > 0 else 1.0
        ax.set_xlim(0, top * 1.18)
        for yi, v in zip(y, secs):
            ax.text(v + top * 0.01, yi, _secs(v), va="center", fontsize=9)
        img = _png(fig, "seconds per stage")
        rows = []
        for s in order:
            n, unit = work.get(s, (None, ""))
            sec = self.seconds[s]
            rate = f"{_num(n / sec)} {unit}/s" if n and sec > 0 else "—"
            done = f"{_num(n)} {_e(unit)}" if n is not None else "—"
            rows.append(f'<tr id="stage-{_e(s)}"><th>{_e(s)}</th><td class="num">{_secs(sec)}'
                        f'</td><td class="num">{done}</td><td class="num">{rate}</td></tr>')
        if other is not None:
            rows.append(f'<tr class="muted"><th>other</th><td class="num">{_secs(other)}</td>'
                        '<td class="num">—</td><td class="num">—</td></tr>')
        extra = ""
        if r.get("tokens_per_s") or r.get("sentences_per_s"):
            extra = ('<p class="caption">Encoding alone (embed stage without its commit): '
                     f"<strong>{_num(r.get('sentences_per_s'))}</strong> sentences/s, "
                     f"<strong>{_num(r.get('tokens_per_s'), 0)}</strong> tokens/s.</p>")
        return (img + '<table class="grid"><thead><tr><th>Stage</th><th class="num">Time</th>'
                '<th class="num">Rows</th><th class="num">Rows/s</th></tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table>" + extra
                + '<p class="caption">Stage times include reading and committing the tables; '
                '"other" is the rest of the run (start, lock, runs table).</p>')

    def lengths(self, emb: dict | None) -> str:
        if emb is None:
            return _not_run("no embeddings table under this output root (no embed stage yet)")
        if not emb["rows"]:
            return _not_run("the embeddings table has no rows for this run's settings")
        settings = (self.fps.get("embeddings") or {}).get("settings") or {}
        try:
            max_len = int(settings.get("max_length") or _DEFAULT_MAX_LENGTH)
        except (TypeError, ValueError):
            max_len = _DEFAULT_MAX_LENGTH
        policy = settings.get("long_policy")
        one, trunc, win = emb["one"], emb["truncated"], emb["windowed"]
        n_one, n_trunc, n_win = (sum(d.values()) for d in (one, trunc, win))
        n = int(emb["rows"])
        enc = n_one + n_trunc + n_win
        parts = []
        if enc:
            parts.append(_png(self._length_figure(one, trunc, win, max_len),
                              "histogram of sentence lengths in tokens"))
        # Percentiles over every encoded sentence; a windowed or truncated one is longer than
        # max_length (its exact length is not stored): "> max_length".
        ranked = sorted(one.items())
        ranked.append((math.inf, n_win + n_trunc))

        def quantile(q: float) -> str:
            need, seen = q * enc, 0
            for v, c in ranked:
                seen += c
                if c and seen >= need:
                    return f"> {max_len}" if v == math.inf else _num(int(v))
            return "—"

        mean = sum(v * c for v, c in one.items()) / n_one if n_one else None
        longest = max(win) if win else None
        parts.append(_kv_table([
            ("Sentences encoded", f'<span id="len-encoded">{_num(enc)}</span>'
             + (f" ({_num(emb['empty'])} empty, not encoded)" if emb["empty"] else "")),
            ("Max length", f"{max_len} tokens" + (f" (long sentences: {_e(policy)})"
                                                   if policy else "")),
            ("Windowed (split into overlapping windows)",
             f'<span id="share-windowed">{_pct(n_win, n)}</span> ({_num(n_win)})'
             + (f", up to {_num(longest)} windows" if longest else "")),
            ("Truncated (cut at max length)",
             f'<span id="share-truncated">{_pct(n_trunc, n)}</span> ({_num(n_trunc)})'),
            ("Tokens per sentence", f"median {quantile(0.5)}, 90th percentile "
                                    f"{quantile(0.9)}, 99th {quantile(0.99)}; mean "
                                    f"{_num(mean)} over the {_num(n_one)} that fit in "
                                    "max_length"),
        ]))
        caption = ("Tokens include <code>[CLS]</code> and <code>[SEP]</code> (the embeddings "
                   "table's <code>n_tokens</code>).")
        if n_win:
            caption += (" A sentence longer than max_length is encoded in overlapping windows "
                        "of max_length tokens each; the table stores its number of windows, "
                        "not its exact length, so those are counted by windows on the right.")
        if n_trunc:
            caption += (" A truncated sentence was cut to max_length tokens: it is counted at "
                        "max_length, its exact length is not stored.")
        parts.append(f'<p class="caption">{caption}</p>')
        if "embed" not in self.stages:
            parts.insert(0, '<p class="caption">The embed stage was not part of this run: '
                            "this is the embeddings table as it is now.</p>")
        return "".join(parts)

    @staticmethod
    def _length_figure(one: dict, trunc: dict, win: dict, max_len: int):
        from matplotlib.ticker import MaxNLocator

        fig = _figure(9.0, 3.4)
        if win:
            gs = fig.add_gridspec(1, 2, width_ratios=[3.2, 1])
            ax, ax2 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        else:
            ax, ax2 = fig.add_subplot(), None
        _style(ax)
        width = max(1, math.ceil(max_len / 64))

        def binned(d):  # bins (x - width, x]: the last one ends exactly at max_length
            out: dict = {}
            for v, c in d.items():
                x = -(-v // width) * width
                out[x] = out.get(x, 0) + c
            return sorted(out.items())

        top = 1
        for d, color, label in ((one, _BLUE, "one window"),
                                (trunc, _RED, "truncated at max_length")):
            if d:
                b = binned(d)
                ax.bar([x for x, _ in b], [c for _, c in b], width=-width * 0.9, align="edge",
                       color=color, label=label)
                top = max(top, max(c for _, c in b))
        ax.axvline(max_len, color=_RED, linestyle="--", linewidth=1.4)
        ax.text(max_len, top * 1.04, f"max_length = {max_len} ", color=_RED, fontsize=9,
                ha="right", va="bottom")
        ax.set_ylim(0, top * 1.16)
        ax.set_xlim(0, max_len + 1.5 * width)
        ax.set_xlabel("tokens per sentence (one window)", fontsize=9)
        ax.set_ylabel("sentences", fontsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", color="#e2e8f0")
        if trunc:
            ax.legend(fontsize=8.5, frameon=False, loc="upper left")
        if ax2 is not None:
            _style(ax2)
            ks = sorted(win)
            if len(ks) > 12:  # group the long tail
                head, tail = ks[:11], ks[11:]
                labels = [str(k) for k in head] + [f"{tail[0]}+"]
                vals = [win[k] for k in head] + [sum(win[k] for k in tail)]
            else:
                labels, vals = [str(k) for k in ks], [win[k] for k in ks]
            ax2.bar(range(len(vals)), vals, color=_ORANGE, width=0.7)
            ax2.set_xticks(range(len(vals)), labels)
            ax2.set_xlabel("windows per sentence", fontsize=9)
            ax2.set_title(f"longer than max_length ({sum(vals):,})", fontsize=9)
            ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax2.grid(axis="y", color="#e2e8f0")
        return fig

    def categories(self, sent: dict | None) -> str:
        if sent is None:
            return _not_run("no sentences table under this output root (no segment stage yet)")
        if not sent["cells"]:
            return _not_run("the sentences table has no rows")
        per_cat = sent["per_cat"]
        cats = sorted(per_cat, key=lambda c: (-per_cat[c]["notes"], _label(c)))
        sec_tot: dict = {}
        for _, sc, v in sent["cells"]:
            sec_tot[sc] = sec_tot.get(sc, 0) + v["sections"]
        secs = sorted(sec_tot, key=lambda sc: (-sec_tot[sc], _label(sc)))
        fig, log_scale = self._category_figure(sent["cells"], cats, secs)
        img = _png(fig, "sections per note category (heatmap)")
        body = "".join(
            f'<tr data-category="{_e(c)}"><th>{_e(_label(c))}</th>'
            f'<td class="num">{_num(per_cat[c]["notes"])}</td>'
            f'<td class="num">{_num(per_cat[c]["sections"])}</td>'
            f'<td class="num">{_num(per_cat[c]["sections"] / max(per_cat[c]["notes"], 1))}</td>'
            f'<td class="num">{_num(per_cat[c]["sentences"])}</td></tr>' for c in cats)
        t = sent["total"]
        more = ""
        if len(cats) > _MAX_CATEGORIES or len(secs) > _MAX_SECTIONS:
            more = (f" The plot shows the {min(len(cats), _MAX_CATEGORIES)} note categories "
                    f"with most notes and the {min(len(secs), _MAX_SECTIONS)} most frequent "
                    "section categories; the others are summed in the last row and column.")
        return (img + '<p class="caption">Number of sections of each section category (rows) '
                "in the notes of each note category (columns); sentences table, current rows"
                f"{', colour on a log scale' if log_scale else ''}.{more}</p>"
                '<table class="grid"><thead><tr><th>Note category</th><th class="num">Notes'
                '</th><th class="num">Sections</th><th class="num">Sections per note</th>'
                '<th class="num">Sentences</th></tr></thead>'
                f"<tbody>{body}</tbody><tfoot><tr><th>Total</th>"
                f'<td class="num">{_num(t["notes"])}</td><td class="num">'
                f'{_num(t["sections"])}</td><td class="num">'
                f'{_num(t["sections"] / max(t["notes"], 1))}</td><td class="num">'
                f'{_num(t["sentences"])}</td></tr></tfoot></table>')

    @staticmethod
    def _category_figure(cells, cats: list, secs: list):
        """Heatmap: section categories (rows) x note categories (columns), sections per cell.
        Rows are many and short labels read best horizontally; columns are few."""
        import numpy as np
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap, LogNorm, Normalize
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        col_keys, row_keys = cats[:_MAX_CATEGORIES], secs[:_MAX_SECTIONS]
        ci = {c: j for j, c in enumerate(col_keys)}
        ri = {sc: i for i, sc in enumerate(row_keys)}
        n_rows = len(row_keys) + (len(secs) > len(row_keys))
        n_cols = len(col_keys) + (len(cats) > len(col_keys))
        grid = np.zeros((n_rows, n_cols))
        for c, sc, v in cells:
            grid[ri.get(sc, n_rows - 1), ci.get(c, n_cols - 1)] += v["sections"]
        rlabels = [_label(sc) for sc in row_keys]
        clabels = [_label(c) for c in col_keys]
        if n_rows > len(row_keys):
            rlabels.append(f"({len(secs) - len(row_keys)} more)")
        if n_cols > len(col_keys):
            clabels.append(f"({len(cats) - len(col_keys)} more)")

        w = min(10.5, max(5.5, 0.62 * n_cols + 3.6))
        h = min(12.0, max(2.4, 0.27 * n_rows + 1.7))
        fig = _figure(w, h)
        ax = fig.add_subplot()
        top = float(grid.max()) or 1.0
        # Blues without its white end: a cell with one section is visibly blue, an empty one
        # shows the background. Log scale when counts span decades, so that one dominant
        # section type does not wash out the rest.
        cmap = ListedColormap(colormaps["Blues"](np.linspace(0.15, 1.0, 256)))
        log_scale = top >= 50
        norm = LogNorm(vmin=1, vmax=top) if log_scale else Normalize(vmin=0, vmax=top)
        im = ax.imshow(np.where(grid > 0, grid, np.nan), cmap=cmap, aspect="auto", norm=norm,
                       interpolation="nearest")
        ax.set_facecolor("#f7fafc")
        ax.set_xticks(range(n_cols), clabels, rotation=35, ha="right", rotation_mode="anchor",
                      fontsize=8.5)
        ax.set_yticks(range(n_rows), rlabels, fontsize=8.5)
        ax.tick_params(length=0)
        ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.2)
        ax.tick_params(which="minor", length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        for i in range(n_rows):
            for j in range(n_cols):
                v = grid[i, j]
                if v:
                    ax.text(j, i, f"{int(v):,}", ha="center", va="center", fontsize=7.5,
                            color="white" if norm(v) > 0.5 else "#1a202c")
        cb = fig.colorbar(im, ax=ax, shrink=min(0.9, 6 / max(h, 1)), pad=0.02, aspect=25)
        cb.set_label("sections", fontsize=9)
        if log_scale:
            cb.set_ticks([t for t in (1, 10, 100, 1000, 10**4, 10**5, 10**6, 10**7) if t <= top])
            cb.minorticks_off()
        else:
            cb.locator = MaxNLocator(integer=True, nbins=5)
        cb.formatter = FuncFormatter(lambda v, _: f"{v:,.0f}")
        cb.ax.tick_params(labelsize=8.5)
        cb.update_ticks()
        ax.set_xlabel("note category", fontsize=9)
        ax.set_ylabel("section category", fontsize=9)
        return fig, log_scale

    def padding(self) -> str:
        r = self.row
        eff = r.get("padding_efficiency")
        if eff is None:
            return _not_run("no sentences were encoded in this run (no embed stage, or "
                            "nothing new to encode)")
        eff = float(eff)
        width = max(0.0, min(100.0, 100 * eff))
        return (f'<div class="meter" role="img" aria-label="padding efficiency {width:.1f}%">'
                f'<div class="fill" style="width:{width:.1f}%"></div></div>'
                + _kv_table([
                    ("Padding efficiency", f'<strong id="padding-efficiency">{100 * eff:.1f}%'
                                           "</strong>"),
                    ("Real tokens", _num(r.get("tokens"))),
                    ("Tokens fed to the model, padding included", _num(r.get("padded_tokens"))),
                    ("Windows", _num(r.get("windows"))),
                    ("Out-of-memory retries", _num(r.get("oom_retries"))),
                ])
                + '<p class="caption">Real tokens / tokens the model computed: batches are '
                "padded to their longest sequence, so sorting by length keeps this near 100%."
                "</p>")

    def fingerprints(self) -> str:
        if not self.fps:
            return _not_run("this run recorded no fingerprints")
        rows = []
        for table in sorted(self.fps):
            v = self.fps[table] if isinstance(self.fps[table], dict) else {}
            s = v.get("settings") or {}
            model = s.get("model") or ""
            rev = s.get("revision")
            rows.append(f"<tr><th>{_e(table)}</th><td><code>{_e(v.get('fingerprint'))}</code>"
                        "</td><td>" + (f"<code>{_e(model)}</code>" if model else "—")
                        + (f" @ <code>{_e(rev)}</code>" if model and rev else "") + "</td></tr>")
        pretty = json.dumps(self.fps, indent=2, sort_keys=True, default=str)
        return ('<table class="grid"><thead><tr><th>Table</th><th>Fingerprint</th>'
                f"<th>Model</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
                '<p class="caption">A row is current when its fingerprint equals the hash of '
                "the settings below; changing any of them recomputes exactly the rows it "
                f"affects.</p><pre>{_e(pretty)}</pre>")

    # ---------------------------------------------------------------- page
    def render(self) -> str:
        sent = self._sentence_stats()
        emb = self._embedding_stats()
        rejects = self._rejects()
        parts = [
            ("overview", "Run overview", self.overview()),
            ("counts", "Counts", self.counts(sent, emb, rejects)),
            ("rejects", "Rejects by reason", self.rejects(rejects)),
            ("stages", "Time and throughput per stage", self.stages_section()),
            ("lengths", "Sentence length in tokens", self.lengths(emb)),
            ("categories", "Sections per note category", self.categories(sent)),
            ("padding", "Padding efficiency", self.padding()),
            ("fingerprints", "Model and settings fingerprints", self.fingerprints()),
        ]
        assert tuple(p[0] for p in parts) == SECTION_IDS
        nav = " · ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in parts)
        body = "\n".join(f'<section id="{sid}"><h2>{_e(title)}</h2>\n{content}\n</section>'
                         for sid, title, content in parts)
        status = str(self.row.get("status") or "unknown")
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        from . import __version__

        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run {_e(self.run_id)} · clinicalbert-spark</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Run <code>{_e(self.run_id)}</code>
<span class="status status-{_e(status)}">{_e(status)}</span></h1>
<p class="sub">clinicalbert-spark {_e(__version__)} run report · generated {now} ·
aggregates only, no note or sentence text</p>
<nav>{nav}</nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f9;color:#1a202c;font:15px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#1a365d;color:#fff;padding:18px 32px 12px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header code{background:rgba(255,255,255,.12);color:#fff}
header .sub{margin:0 0 10px;color:#cbd5e0;font-size:13px}
nav{font-size:13px}nav a{color:#bee3f8;text-decoration:none}nav a:hover{text-decoration:underline}
main{max-width:1060px;margin:0 auto;padding:18px 24px 40px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:14px 22px 18px;
margin:0 0 18px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
h2{margin:0 0 12px;font-size:18px;color:#1a365d;border-bottom:1px solid #edf2f7;padding-bottom:6px}
code{font:13px/1.3 ui-monospace,"DejaVu Sans Mono",Menlo,monospace;background:#edf2f7;
padding:1px 4px;border-radius:3px;word-break:break-all}
pre{background:#f7fafc;border:1px solid #e2e8f0;border-radius:6px;padding:10px 12px;
font:12.5px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,monospace;overflow:auto;white-space:pre-wrap}
table{border-collapse:collapse;margin:6px 0 8px}
table.kv th{text-align:left;font-weight:500;color:#4a5568;padding:3px 24px 3px 0;vertical-align:top;
white-space:nowrap}
table.kv td{padding:3px 0}
table.grid{min-width:55%}
table.grid th,table.grid td{padding:4px 12px;border-bottom:1px solid #edf2f7;text-align:left}
table.grid thead th{font-size:13px;color:#4a5568;border-bottom:2px solid #e2e8f0;font-weight:600}
table.grid tbody th{font-weight:500}
table.grid tfoot th,table.grid tfoot td{font-weight:600;border-top:2px solid #e2e8f0}
.num{text-align:right!important;font-variant-numeric:tabular-nums;white-space:nowrap}
td.note{color:#718096;font-size:13px}
tr.muted{color:#718096}
.caption{color:#4a5568;font-size:13px;margin:4px 0 8px}
img.plot{display:block;max-width:100%;height:auto;margin:4px 0 10px}
.notrun{color:#744210;background:#fffaf0;border:1px solid #fbd38d;border-radius:6px;
padding:8px 12px;margin:4px 0}
.status{display:inline-block;font-size:13px;font-weight:600;padding:1px 9px;border-radius:10px;
vertical-align:middle;background:#e2e8f0;color:#2d3748}
.status-succeeded{background:#c6f6d5;color:#22543d}
.status-failed,.status-crashed{background:#fed7d7;color:#822727}
.status-running{background:#feebc8;color:#7b341e}
.meter{height:14px;max-width:480px;background:#edf2f7;border-radius:7px;overflow:hidden;
margin:4px 0 10px}
.meter .fill{height:100%;background:#2b6cb0}
"""
