"""`uti eval`'s EVAL/report.json, a self-contained EVAL/report.html and the terminal summary.

The report dict's shape is the contract in EVAL_SCHEMA.md ("uti.eval_report", version 1). The page
needs nothing beside itself: plots are matplotlib (Agg) PNGs and the decoded WAV/PNG files are
embedded as base64 data: URIs, so the one file can be copied off a cluster and opened anywhere.
Everything that comes from the report is html.escape'd: captions and paths are user data.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

REPORT_FORMAT = "uti.eval_report"
REPORT_VERSION = 1
MAX_MEDIA_PER_TASK = 32  # decoded files embedded per task; more would make the page too large to open
_COLORS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "WARN": "#9a6700", "SKIP": "#6e7781"}
_RED = _COLORS["FAIL"]
_MIME = {".wav": "audio/wav", ".png": "image/png"}
SECTIONS = (  # report key, heading; the page shows them in this order
    ("losses", "Held-out loss per task"),
    ("dependence", "Conditional dependence"),
    ("generation", "Generation health"),
    ("text_regression", "Text regression"),
    ("collapse", "Mix collapse"),
    ("baseline", "Baseline"),
)


# ---- report.json -----------------------------------------------------------------------------------------
def write_json(report: dict[str, Any], directory: Path) -> Path:
    """directory/report.json, written to a temporary name and renamed: a reader never sees half a file."""
    path = Path(directory) / "report.json"
    _write_atomic(path, json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=_plain) + "\n")
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serializable in the eval report: {type(obj).__name__} ({obj!r:.80})")


# ---- formatting ------------------------------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    """A number for a table cell; None/NaN as a dash (the value was not measured)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _e(v)


def _interval(iv: dict[str, Any] | None, digits: int = 3) -> str:
    """mean [low, high] of an Interval dict; a dash when absent."""
    if not iv:
        return "—"
    return f"{_num(iv.get('mean'), digits)} [{_num(iv.get('low'), digits)}, {_num(iv.get('high'), digits)}]"


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped by the caller): a row may carry a badge or a red flag."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _badge(verdict: str) -> str:
    color = _COLORS.get(verdict, "#6e7781")
    return f"<span class='badge' style='background:{color}'>{_e(verdict)}</span>"


def _red(text: str) -> str:
    return f"<span class='flag'>{_e(text)}</span>"


def _img(b64: str, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src=\"data:image/png;base64,{b64}\">"


# ---- plots -----------------------------------------------------------------------------------------------
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _error_bars(items: dict[str, dict[str, Any]]) -> tuple[list[str], list[float], list[list[float]]]:
    """Names, means and matplotlib's [below, above] distances of an interval per name."""
    names = sorted(items)
    means = [float(items[n]["mean"]) for n in names]
    below = [max(0.0, m - float(items[n].get("low", m))) for n, m in zip(names, means)]
    above = [max(0.0, float(items[n].get("high", m)) - m) for n, m in zip(names, means)]
    return names, means, [below, above]


def _losses_figure(losses: dict[str, Any]):
    import matplotlib.pyplot as plt

    names, means, err = _error_bars(losses)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.2))
    ax.bar(names, means, yerr=err, capsize=4, color="#0969da")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Held-out loss per task (95% bootstrap interval)")
    return fig


def _gap_figure(dependence: dict[str, Any]):
    import matplotlib.pyplot as plt

    gaps = {t: d["gap"] for t, d in dependence.items() if d.get("gap")}
    if not gaps:
        return None
    names, means, err = _error_bars(gaps)
    colors = [_RED if dependence[n].get("flag") else "#1a7f37" for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.2))
    ax.bar(names, means, yerr=err, capsize=4, color=colors)
    ax.axhline(0, color="black", lw=1)
    ax.set_ylabel("other - own loss (nats / token)")
    ax.set_title("Conditioning gap per task (red: flagged)")
    return fig


def _collapse_figure(collapse: dict[str, Any]):
    import matplotlib.pyplot as plt

    series = {t: s for t, s in (collapse.get("series") or {}).items() if s}
    if not series:
        return None
    flagged = {f["task"] for f in collapse.get("flags") or []}
    palette = ["#0969da", "#8250df", "#1a7f37", "#9a6700", "#6e7781", "#bf3989"]  # no red: red means flagged
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, task in enumerate(sorted(series)):
        steps, values = zip(*series[task])
        red = task in flagged
        ax.plot(steps, values, marker=".", lw=2.2 if red else 1.2, color=_RED if red else palette[i % len(palette)],
                label=task + (" (flagged)" if red else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Loss per task over the run ({collapse.get('source', '?')})")
    ax.legend(fontsize=8)
    return fig


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Section key -> base64 PNG for the sections that have numbers to plot. Agg: a headless node draws too."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    makers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "losses": _losses_figure, "dependence": _gap_figure, "collapse": _collapse_figure}
    out: dict[str, str] = {}
    for key, make in makers.items():
        part = report.get(key)
        fig = make(part) if part else None
        if fig is not None:
            out[key] = _png(fig)
    return out


# ---- sections --------------------------------------------------------------------------------------------
def _losses_html(losses: dict[str, Any], directory: Path) -> str:
    rows = [[_e(t), _interval(v), _num(v.get("n_samples")), _num(v.get("n_tokens"))] for t, v in sorted(losses.items())]
    return _table(["task", "loss mean [low, high]", "samples", "tokens"], rows)


def _retrieval(r: dict[str, Any] | None) -> str:
    if not r:
        return "—"
    text = f"{_pct(r.get('accuracy'))} vs chance {_pct(r.get('chance'))}, K={_num(r.get('k'))}"
    return text + (f"<br><small>{_e(r['note'])}</small>" if r.get("note") else "")


def _dependence_html(dependence: dict[str, Any], directory: Path) -> str:
    rows = []
    for task, d in sorted(dependence.items()):
        flag = _red(d["flag"]) if d.get("flag") else ("uses its prompt" if d.get("uses_prompt") else "—")
        rows.append([_e(task), _interval(d.get("own")), _interval(d.get("other")), _interval(d.get("empty")),
                     _interval(d.get("gap")), _interval(d.get("empty_gap")), _retrieval(d.get("retrieval")), flag])
    return _table(["task", "own prompt", "other prompt", "empty prompt", "gap (other - own)",
                   "empty gap (empty - own)", "retrieval accuracy", "flag"], rows)


def _length_html(length: dict[str, Any]) -> str:
    qs = length.get("quantiles") or []
    header = ["", *(f"q{q:g}" for q in qs), "mean"]
    rows = [[name, *(_num(v, 1) for v in length.get(key) or []), _num(length.get(f"{key}_mean"), 1)]
            for name, key in (("generated", "generated"), ("data", "data"))]
    return _table(header, rows)


def _diversity_html(div: dict[str, Any]) -> str:
    distinct = div.get("distinct_per_level") or []
    books = div.get("codebook_per_level") or []
    shares = div.get("repeated_ngram_share") or []
    rows = [[str(i), _num(d), _num(books[i] if i < len(books) else None),
             _pct(d / books[i]) if i < len(books) and books[i] else "—"] for i, d in enumerate(distinct)]
    worst = f", worst {_num(max(shares))} over {len(shares)} generations" if shares else ""
    return (_table(["level", "distinct codes", "codebook size", "used"], rows)
            + f"<p>share of {_num(div.get('ngram'))}-frame windows repeated within a generation: mean "
            f"<b>{_num(div.get('mean_repeated_ngram_share'))}</b>{worst}</p>")


def _memorization_html(mem: dict[str, Any] | None) -> str:
    if not mem:
        return "<p>memorization: not run</p>"
    s = mem.get("settings") or {}
    rows = [[_e(n.get("label")), _num(n.get("n_tokens")), _num(n.get("run")), _num(n.get("run_share")),
             _e(n.get("run_sample_id")), _num(n.get("jaccard")), _e(n.get("jaccard_sample_id")),
             _red("memorized") if n.get("memorized") else "no"] for n in mem.get("nearest") or []]
    memorized = mem.get("memorized") or []
    listed = ("<p>memorized: none</p>" if not memorized else "<p class='flag'>memorized:</p><ul>" + "".join(
        f"<li>{_e(m.get('generation'))} copies training sample {_e(m.get('training_sample'))}: run "
        f"{_num(m.get('run'))} tokens ({_pct(m.get('run_share'))})</li>" for m in memorized) + "</ul>")
    return (f"<h4>Memorization</h4><p>against {_num(mem.get('n_train'))} training samples; memorized when the "
            f"longest common run is at least {_num(s.get('min_run'))} tokens and {_pct(s.get('run_fraction'))} of "
            "the generation</p>"
            + _table(["generation", "tokens", "run", "run share", "run sample", "jaccard", "jaccard sample",
                      "memorized"], rows) + listed)


def _media_item(f: dict[str, Any], directory: Path) -> str:
    """One decoded file as an embedded player/image; a missing or unreadable one says so instead."""
    caption = f"<figcaption>{_e(f.get('caption', ''))}<br><small>{_e(f.get('sample_id'))}</small></figcaption>"
    rel = f.get("path")
    if not rel:
        return f"<figure><p>no file (decoding failed)</p>{caption}</figure>"
    path = Path(directory) / rel
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        return f"<figure><p>not embedded (not WAV/PNG): {_e(rel)}</p>{caption}</figure>"
    try:
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return f"<figure><p class='flag'>missing: {_e(rel)}</p>{caption}</figure>"
    if mime.startswith("audio/"):
        body = f"<audio controls src=\"data:{mime};base64,{b64}\"></audio>"
    else:
        body = f"<img alt='{_e(f.get('sample_id'))}' src=\"data:{mime};base64,{b64}\">"
    return f"<figure>{body}{caption}</figure>"


def _media_html(files: list[dict[str, Any]], directory: Path) -> str:
    if not files:
        return ""
    shown = "".join(_media_item(f, directory) for f in files[:MAX_MEDIA_PER_TASK])
    left = len(files) - MAX_MEDIA_PER_TASK
    more = f"<p>{left} more files not embedded (at most {MAX_MEDIA_PER_TASK} per task)</p>" if left > 0 else ""
    return f"<h4>Decoded files</h4><div class='media'>{shown}</div>{more}"


def _failures_html(g: dict[str, Any]) -> str:
    out = ""
    if g.get("failures"):
        rows = [[_e(f.get("sample_id")), _e(f.get("caption")), _e(f.get("error"))] for f in g["failures"]]
        out += "<h4>Decode failures</h4>" + _table(["sample", "caption", "error"], rows)
    checks = g.get("check_failures") or []
    out += ("<p>file checks: all passed</p>" if not checks else
            "<h4>File check failures</h4><ul>" + "".join(f"<li>{_e(c)}</li>" for c in checks) + "</ul>")
    return out


def _generation_task_html(task: str, g: dict[str, Any], directory: Path) -> str:
    return (f"<h3>{_e(task)}</h3><p>{_num(g.get('n'))} generations, failure rate <b>{_pct(g.get('failure_rate'))}"
            "</b></p>" + _failures_html(g) + "<h4>Length (frames per sample): generated vs data</h4>"
            + _length_html(g.get("length") or {}) + "<h4>Diversity</h4>" + _diversity_html(g.get("diversity") or {})
            + _memorization_html(g.get("memorization")) + _media_html(g.get("files") or [], directory))


def _generation_html(generation: dict[str, Any], directory: Path) -> str:
    return "".join(_generation_task_html(t, g, directory) for t, g in sorted(generation.items()))


def _text_regression_html(t: dict[str, Any], directory: Path) -> str:
    return (f"<p>base model <code>{_e(t.get('base_model'))}</code>, {_num(t.get('n_docs'))} text documents of "
            f"split {_e(t.get('split'))}</p>"
            + _table(["base loss", "trained loss", "drift (trained - base)"],
                     [[_interval(t.get("base")), _interval(t.get("trained")), _interval(t.get("drift"))]]))


def _collapse_html(c: dict[str, Any], directory: Path) -> str:
    flags = c.get("flags") or []
    rows = [[_red(f.get("task")), _num((f.get("best") or {}).get("step")), _num((f.get("best") or {}).get("loss")),
             _num((f.get("last") or {}).get("step")), _num((f.get("last") or {}).get("loss")), _num(f.get("rise")),
             _e(", ".join(f.get("falling") or []))] for f in flags]
    table = ("<p>no task's loss rose while the others fell</p>" if not flags else
             _table(["task", "best step", "best loss", "last step", "last loss", "rise", "falling tasks"], rows))
    note = f"<p><small>{_e(c['note'])}</small></p>" if c.get("note") else ""
    return f"<p>source: {_e(c.get('source'))}</p>{table}{note}"


def _baseline_html(b: dict[str, Any], directory: Path) -> str:
    regs = b.get("regressions") or []
    head = f"<p>baseline <code>{_e(b.get('path'))}</code>: {_num(b.get('compared'))} metrics compared</p>"
    if not regs:
        return head + "<p>no regressions</p>"
    rows = [[_red(r.get("metric")), _num(r.get("baseline")), _num(r.get("current")), _e(r.get("limit")),
             _e(r.get("detail"))] for r in regs]
    return head + _table(["metric", "baseline", "current", "limit", "detail"], rows)


_RENDERERS: dict[str, Callable[[dict[str, Any], Path], str]] = {
    "losses": _losses_html, "dependence": _dependence_html, "generation": _generation_html,
    "text_regression": _text_regression_html, "collapse": _collapse_html, "baseline": _baseline_html}


def _section_html(report: dict[str, Any], key: str, title: str, images: dict[str, str], directory: Path) -> str:
    part = report.get(key)
    if not part:
        reason = (report.get("skipped") or {}).get(key, "no data")
        return f"<h2>{_e(title)}</h2><p class='skip'>not run: {_e(reason)}</p>"
    plot = _img(images[key], title) if key in images else ""
    return f"<h2>{_e(title)}</h2>{_RENDERERS[key](part, directory)}{plot}"


# ---- the page --------------------------------------------------------------------------------------------
_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;width:100%;margin:0.5em 0}
td,th{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}
img{max-width:100%} .badge{color:white;font-weight:bold;padding:1px 6px;border-radius:4px}
.flag{color:#cf222e;font-weight:bold} .skip{color:#6e7781;font-style:italic}
.media{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start} figure{margin:0;max-width:280px}
figure img{width:192px;image-rendering:pixelated}
figcaption{font-size:12px}"""


def _header_html(report: dict[str, Any]) -> str:
    verdict = "PASS" if report.get("ok") else "FAIL"
    space = str(report.get("token_space_id", ""))
    data = "<br>".join(f"<code>{_e(d)}</code>" for d in report.get("data") or [])
    seconds = report.get("seconds")
    return (f"<h1>uti eval: <span style='color:{_COLORS[verdict]};font-size:1.4em'>{verdict}</span></h1>"
            f"<p>checkpoint <code>{_e(report.get('checkpoint'))}</code> (step {_num(report.get('step'))})<br>"
            f"token space <code title='{_e(space)}'>{_e(space[:12])}</code><br>data {data}<br>"
            f"split <b>{_e(report.get('split'))}</b>, {_num(report.get('num_workers'))} workers, seed "
            f"{_num(report.get('seed'))}, {_num(seconds, 1)} s</p>")


def _checks_html(report: dict[str, Any]) -> str:
    rows = [[_e(c.get("name")), _badge(str(c.get("verdict"))), "hard" if c.get("hard") else "soft", _e(c.get("detail"))]
            for c in report.get("checks") or []]
    return "<h2>Checks</h2>" + _table(["check", "verdict", "kind", "detail"], rows)


def render_html(report: dict[str, Any], directory: Path, *, with_plots: bool = True) -> str:
    """The whole page. directory is the EVAL folder: generation.*.files[].path are relative to it."""
    images = plots(report) if with_plots else {}
    sections = "\n".join(_section_html(report, key, title, images, Path(directory)) for key, title in SECTIONS)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>uti eval: {_e(report.get('checkpoint'))}</title><style>{_STYLE}</style></head><body>\n"
            f"{_header_html(report)}\n{_checks_html(report)}\n{sections}\n</body></html>\n")


def write_html(report: dict[str, Any], directory: Path, *, with_plots: bool = True) -> Path:
    """directory/report.html, atomically (tmp + rename)."""
    path = Path(directory) / "report.html"
    _write_atomic(path, render_html(report, directory, with_plots=with_plots))
    return path


# ---- terminal --------------------------------------------------------------------------------------------
def format_summary(report: dict[str, Any], directory: Path | None = None) -> str:
    """What `uti eval` prints: one line per check, then the verdict. With directory (the EVAL folder the
    report was written to), the last line names its report.json and report.html."""
    checks = report.get("checks") or []
    width = max((len(str(c.get("name", ""))) for c in checks), default=0)
    lines = [f"{str(c.get('verdict')):<6}{str(c.get('name')):<{width}}  {c.get('detail', '')}" for c in checks]
    failed = [str(c.get("name")) for c in checks if c.get("hard") and c.get("verdict") == "FAIL"]
    if report.get("ok"):
        verdict = "PASS: every hard check passed"
    else:
        verdict = "FAIL: " + (", ".join(failed) if failed else "the report says not ok")
    if directory is not None:
        verdict += f"  ({Path(directory) / 'report.json'}, {Path(directory) / 'report.html'})"
    return "\n".join([*lines, verdict])
