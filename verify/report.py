"""report.json, a self-contained report.html (plots embedded as base64 PNG) and the terminal summary."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from verify.findings import Check

REPORT_FORMAT = "uti.verify_report"
REPORT_VERSION = 1
_COLORS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "WARN": "#9a6700", "SKIP": "#6e7781"}


def write_json(report: dict[str, Any], directory: Path) -> Path:
    path = directory / "report.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def _plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


# ---- plots -----------------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Titles -> base64 PNGs. Agg backend: works on a headless cluster node."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    books = report.get("codebooks") or {}
    if books:
        names = list(books)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.2))
        ax.bar(names, [100 * books[n]["utilization"] for n in names], color="#0969da")
        ax.axhline(100 * report["config"]["utilization_warn"], color="#cf222e", ls="--", lw=1, label="warning threshold")
        ax.set_ylabel("codes used (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Codebook utilization per level")
        ax.legend(loc="upper right", fontsize=8)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        out["Codebook utilization per level"] = _png(fig)
    lengths = {k: v for k, v in (report.get("lengths") or {}).items() if v["count"]}
    if lengths:
        names = sorted(lengths)
        cols = 3
        rows = -(-len(names) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            hist = lengths[name]["histogram"]
            lows = [max(h[0], 0.5) for h in hist]
            widths = [(h[1] if h[1] != float("inf") else h[0] * 2) - max(h[0], 0.5) for h in hist]
            ax.bar(lows, [h[2] for h in hist], width=widths, align="edge", color="#8250df")
            ax.set_xscale("log", base=2)
            ax.set_xlim(lows[0] / 2, (lows[-1] + widths[-1]) * 2)  # an octave of room: single bins stay narrow
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_title(f"{name} (mean {lengths[name]['mean']:.0f})", fontsize=9)
            ax.set_xlabel("tokens", fontsize=8)
            limit = report["config"].get("max_seq_len")
            if limit and name.endswith(".sequence"):
                ax.axvline(limit, color="#cf222e", ls="--", lw=1)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle("Length histograms per modality", fontsize=11)
        fig.tight_layout()
        out["Length histograms per modality"] = _png(fig)
    fig = errors_per_shard_figure(report)
    if fig is not None:
        out["Errors per shard"] = _png(fig)
    return out


def errors_per_shard_figure(report: dict[str, Any]):
    """Stacked bars of tokenize errors and verify failures per shard; None without shards."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    shards = report.get("per_shard") or []
    if not shards:
        return None
    labels = [s["shard"] for s in shards]
    errs = report.get("errors_per_shard") or {}
    job_errors = [errs.get(label, 0) for label in labels]
    failures = [sum(s["failures"].values()) for s in shards]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(labels) + 2), 3.2))
    x = range(len(labels))
    ax.bar(x, job_errors, color="#9a6700", label="errors.jsonl rows (tokenize)")
    ax.bar(x, failures, bottom=job_errors, color="#cf222e", label="verify failures")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels if len(labels) <= 60 else [""] * len(labels), rotation=90, fontsize=7)
    # Counts: the axis starts at 0 with whole-number ticks; with no error at all matplotlib would
    # otherwise centre an empty axis on 0 (-0.04 .. 0.04).
    top = max((e + f for e, f in zip(job_errors, failures)), default=0)
    ax.set_ylim(0, max(1, top * 1.05))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("count")
    ax.set_title("Errors per shard" + (": none" if top == 0 else ""))
    ax.legend(fontsize=8)
    return fig


# ---- html ------------------------------------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def render_html(report: dict[str, Any], images: dict[str, str]) -> str:
    rows = []
    for c in report["checks"]:
        first = c["first_failure"]
        where = "" if not first else " ".join(
            f"{k}={_e(first[k])}" for k in ("shard", "key", "id") if first.get(k)) + f"<br>{_e(first['detail'])}"
        notes = "<br>".join(_e(w) for w in c["warnings"] + ([c["note"]] if c["note"] else []))
        rows.append(
            f"<tr><td>{c['number']}</td><td><b>{_e(c['name'])}</b><br><small>{_e(c['title'])}</small></td>"
            f"<td style='color:{_COLORS[c['status']]};font-weight:bold'>{c['status']}</td>"
            f"<td>{'hard' if c['hard'] else 'soft'}</td><td>{c['failures']}</td>"
            f"<td><small>{where}{'<br>' if where and notes else ''}{notes}</small></td>"
            f"<td><details><summary>counts</summary><pre>{_e(json.dumps(c['counts'], indent=1, default=str))}</pre>"
            f"</details></td></tr>"
        )
    policies = _policies_html(report)
    figs = "\n".join(f"<h2>{_e(t)}</h2><img alt='{_e(t)}' src=\"data:image/png;base64,{b}\">" for t, b in images.items())
    s = report["summary"]
    verdict = "PASS" if report["ok"] else "FAIL"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>uti verify: {_e(report['dataset'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}} pre{{margin:0;font-size:11px}}
img{{max-width:100%}}</style></head><body>
<h1>uti verify: <span style="color:{_COLORS['PASS' if report['ok'] else 'FAIL']}">{verdict}</span></h1>
<p>dataset <code>{_e(report['dataset'])}</code><br>token space <code>{_e(report['token_space_id'])}</code><br>
{s['shards']} shards, {s['samples']} samples, {s['errors']} rows in errors.jsonl, {s['bytes'] / 1e6:.1f} MB scanned
in {s['seconds']:.1f} s; created {_e(report['created'])}</p>
<h2>Checks</h2>
<table><tr><th>#</th><th>check</th><th>status</th><th>kind</th><th>failures</th><th>first failure / notes</th><th></th></tr>
{''.join(rows)}</table>
{policies}
{figs}
</body></html>
"""


def _policies_html(report: dict[str, Any]) -> str:
    """The shards per distinct encode policy their headers record, and how retokenize compared each."""
    from verify.policy import policy_summary

    groups = report.get("encode_policies") or []  # older reports have none
    if not groups:
        return ""
    rows = []
    for g in groups:
        policy = g.get("encode_policy")
        what = ("not recorded (shard header version 1: job.json's device decides)" if policy is None else
                "<br>".join(f"{_e(m)}: {_e(policy_summary(p))}" for m, p in sorted(policy.items())) or "none")
        rows.append(f"<tr><td>{g['shards']}</td><td>{_e(g.get('header_version'))}</td><td>{what}</td>"
                    f"<td>{_e(g.get('first_shard'))}</td></tr>")
    retok = next((c for c in report["checks"] if c["name"] == Check.RETOKENIZE), {"counts": {}})
    counts = retok["counts"]
    modes = "".join(
        f"<li>{_e(p['modality'])}: <b>{_e(p['mode'])}</b>, tokenized on {_e(p['tokenized_on'])}, re-encoded on "
        f"{_e(p['re_encoded_on'])} at encode_batch {_e(p['encode_batch'])}"
        + (f", agreement {p['agreement']:.4f}" if p.get("agreement") is not None else "")
        + (f" (threshold {p['threshold']:.2f})" if p.get("threshold") is not None else "")
        + (f"; {_e(p['reason'])}" if p.get("reason") else "") + "</li>"
        for p in counts.get("policies") or [])
    mode = counts.get("mode")
    return (f"<h2>Encode policies</h2><p>retokenize mode: <b>{_e(mode or 'not run')}</b>"
            f"{' (not exact)' if mode and mode != 'exact' and mode != 'none' else ''}</p>"
            f"{'<ul>' + modes + '</ul>' if modes else ''}"
            "<table><tr><th>shards</th><th>header version</th><th>encode policy</th><th>first shard</th></tr>"
            f"{''.join(rows)}</table>")


def write_html(report: dict[str, Any], directory: Path, *, with_plots: bool = True) -> Path:
    path = directory / "report.html"
    path.write_text(render_html(report, plots(report) if with_plots else {}), encoding="utf-8")
    return path


# ---- terminal ----------------------------------------------------------------------------------------------
TOP_REASONS = 5  # errors.jsonl reasons named on the console (report.json lists them all)


def format_summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"uti verify {report['dataset']}  token space {report['token_space_id'][:12]}",
             f"{s['shards']} shards, {s['samples']} samples, {s['errors']} errors.jsonl rows, "
             f"{s['bytes'] / 1e6:.1f} MB in {s['seconds']:.1f} s"]
    reasons = s.get("errors_by_reason") or []  # older reports have none
    if reasons:
        top = ", ".join(f"{r['count']} {r['stage']}/{r['reason']}" for r in reasons[:TOP_REASONS])
        more = f" (and {len(reasons) - TOP_REASONS} more reasons)" if len(reasons) > TOP_REASONS else ""
        lines.append(f"errors.jsonl by stage/reason: {top}{more}")
    lines += ["", f"{'#':>2}  {'check':<16} {'status':<6} {'kind':<4} {'fail':>5}  first failure / note"]
    for c in report["checks"]:
        first = c["first_failure"]
        if first:
            where = " ".join(f"{k}={first[k]}" for k in ("shard", "key", "id") if first.get(k))
            text = f"{where}: {first['detail']}" if where else first["detail"]
        else:
            text = (c["warnings"][:1] or [c["note"]])[0]
        if len(text) > 110:
            text = text[:107] + "..."
        lines.append(f"{c['number']:>2}  {c['name']:<16} {c['status']:<6} {'hard' if c['hard'] else 'soft':<4} "
                     f"{c['failures']:>5}  {text}")
    failed = report["failed_hard"]
    lines += ["", f"FAIL: {', '.join(failed)}" if failed else "PASS: every hard check passed"]
    return "\n".join(lines)
