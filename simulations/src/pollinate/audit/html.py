"""The audit report as one self-contained HTML page.

:func:`render_html` turns a report (:func:`pollinate.audit.report.build_report`) into a
page that needs nothing else: inline CSS, no script, plots embedded as base64 PNGs drawn
with matplotlib's Agg backend, and no reference to anything outside the page, so it
opens offline and fetches nothing. The headline verdict, ε per layer and the status of
the empirical bound come first.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em;
       color: #1a1a1a; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; padding: 0.3em 0.9em; border-radius: 0.3em;
           font-size: 1.4em; font-weight: bold; color: #fff; }
.verdict-pass { background: #1b7a32; }
.verdict-fail { background: #b3261e; }
.verdict-not-private { background: #6b4e00; }
.ok { color: #1b7a32; font-weight: bold; }
.bad { color: #b3261e; font-weight: bold; }
.muted { color: #555; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figure img { max-width: 32em; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _e(value: object) -> str:
    """``value`` as escaped text (numbers shown with 6 significant digits)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return html.escape(json.dumps(value, ensure_ascii=False))
    return html.escape(str(value))


def _eps(value: object) -> str:
    """An ε for the headline, to 4 significant digits (full precision further down)."""
    return f"{value:.4g}" if isinstance(value, float | int) else "— (infinite or none)"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table; cells are already-escaped HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    # No metadata: matplotlib's default names its web site in the PNG.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(data: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _plots(report: Mapping[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    layers = report.get("layers") or {}
    local = layers.get("local")
    if local:
        hist = local["devices"]["histogram"]
        edges, counts = hist["bin_edges"], hist["counts"]
        if counts:
            fig, ax = plt.subplots(figsize=(5, 3.2))
            widths = [b - a for a, b in itertools.pairwise(edges)]
            ax.bar(edges[:-1], counts, width=widths, align="edge", edgecolor="black")
            ax.set_xlabel("ε of a device (interaction level)")
            ax.set_ylabel("devices")
            ax.set_title("Per-device ε")
            out.append(
                _figure(_png(fig), "histogram of per-device epsilon", "Per-device ε (local)")
            )
    user = layers.get("user")
    if user and user.get("epsilon_per_round"):
        rows = [r for r in user["epsilon_per_round"] if r.get("epsilon_recomputed") is not None]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(
            [r["round"] for r in rows],
            [r["epsilon_recomputed"] for r in rows],
            marker="o",
            label="recomputed",
        )
        rec = [r for r in user["epsilon_per_round"] if r.get("epsilon") is not None]
        ax.plot(
            [r["round"] for r in rec],
            [r["epsilon"] for r in rec],
            linestyle="none",
            marker="x",
            color="black",
            label="ledger",
        )
        ax.set_xlabel("round")
        ax.set_ylabel(f"ε at δ = {user.get('delta'):.3g}" if user.get("delta") else "ε")
        ax.set_title("User-level ε after each round")
        ax.legend()
        out.append(_figure(_png(fig), "user-level epsilon per round", "User-level ε per round"))
    profiles = [(n, layer["privacy_profile"]) for n, layer in layers.items()]
    profiles = [(n, p) for n, p in profiles if p]
    if profiles:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, profile in profiles:
            pts = [(p["delta"], p["epsilon"]) for p in profile if p["epsilon"] is not None]
            ax.plot([d for d, _ in pts], [e for _, e in pts], marker=".", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("δ")
        ax.set_ylabel("ε")
        ax.set_title("Privacy profile ε(δ)")
        ax.legend()
        out.append(_figure(_png(fig), "privacy profile", "Privacy profile ε(δ) per layer"))
    return out


def _roc_plots(report: Mapping[str, Any]) -> list[str]:
    """Each attack's ROC on linear and log axes, with the baseline's and the curve that
    the claimed (ε, δ) allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for threat, block in (report.get("membership_inference") or {}).items():
        roc = block.get("roc")
        if not roc:
            continue
        fpr, tpr = roc["fpr"], roc["tpr"]
        for scale in ("linear", "log"):
            fig, ax = plt.subplots(figsize=(4.6, 3.6))
            ax.plot(fpr, tpr, label=f"attack (AUC {block['auc']:.3f})", drawstyle="steps-post")
            base = block.get("baseline") or {}
            if base.get("roc"):
                ax.plot(
                    base["roc"]["fpr"],
                    base["roc"]["tpr"],
                    linestyle="--",
                    label=f"baseline, no DP (AUC {base['auc']:.3f})",
                    drawstyle="steps-post",
                )
            if block.get("bound_tpr"):
                c = block["claimed"]
                ax.plot(fpr, block["bound_tpr"], color="black", linewidth=1,
                        label=f"allowed by ε={c['epsilon']:.3g}, δ={c['delta']:.2g}")  # fmt: skip
            ax.plot([1e-4, 1], [1e-4, 1], color="grey", linewidth=0.8, linestyle=":",
                    label="chance")  # fmt: skip
            if scale == "log":
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlim(1e-4, 1)
                ax.set_ylim(1e-4, 1.05)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title(f"{threat} attack ({scale})")
            ax.legend(fontsize=7, loc="lower right")
            out.append(
                _figure(
                    _png(fig),
                    f"ROC of the {threat} membership attack, {scale} scale",
                    f"{threat} attack ROC ({scale} axes)",
                )
            )
    return out


def _headline(report: Mapping[str, Any]) -> str:
    verdict = str(report.get("verdict"))
    layers = report.get("layers") or {}
    empirical = report.get("empirical") or {}
    rows = []
    for name in ("local", "user"):
        layer = layers.get(name)
        emp = empirical.get(name) or {}
        if layer is None:
            continue
        rows.append(
            [
                _e(name),
                _e(layer.get("unit")),
                f'<span class="num">{_eps(layer.get("epsilon"))}</span>',
                f'<span class="num">{_eps(layer.get("epsilon_recomputed"))}</span>',
                _e(layer.get("delta")),
                _e(emp.get("epsilon_lower_bound")) + f' <span class="muted">'
                f"({_e(emp.get('status'))})</span>",
            ]
        )
    table = (
        _table(
            [
                "layer",
                "unit",
                "ε (ledger)",
                "ε (recomputed)",
                "δ",
                "empirical ε lower bound",
            ],
            rows,
        )
        if rows
        else "<p><strong>No differential privacy: no ε is claimed.</strong></p>"
    )
    run = report.get("run") or {}
    return (
        f'<p><span class="verdict verdict-{html.escape(verdict)}">Verdict: '
        f"{html.escape(verdict)}</span></p>"
        f"<p>{_e(report.get('verdict_reason'))}</p>"
        f"<p class='muted'>Run <code>{_e(run.get('dir'))}</code>: --dp {_e(run.get('dp'))}, "
        f"{_e(run.get('dataset'))} / {_e(run.get('model'))} / {_e(run.get('task'))}, "
        f"{_e(run.get('devices'))} devices, {_e(run.get('rounds_completed'))} of "
        f"{_e(run.get('rounds_planned'))} rounds. Report generated "
        f"{_e(report.get('generated_at'))}.</p>" + table
    )


def _layers(report: Mapping[str, Any]) -> str:
    parts = []
    for name, layer in (report.get("layers") or {}).items():
        p = layer["parameters"]
        rows = [
            ["unit", _e(layer.get("unit_statement") or layer.get("unit"))],
            [
                "neighbouring relation",
                _e(layer.get("neighbouring_statement") or layer.get("neighbouring")),
            ],
            [
                "ε (ledger) / recomputed",
                f"{_e(layer['epsilon'])} / {_e(layer['epsilon_recomputed'])}",
            ],
            ["ε is of", _e(layer.get("epsilon_is_of"))],
            ["δ", _e(layer.get("delta_range") or layer.get("delta"))],
            ["worst relative difference", _e(layer.get("worst_relative_error"))],
            ["accountant (ledger)", _e(layer.get("accountant"))],
            ["recomputed with", _e(layer.get("recomputation"))],
            ["library versions (ledger)", _e(layer.get("versions"))],
            ["noise multiplier z", _e(p.get("noise_multiplier"))],
            ["clip (C or S)", _e(p.get("clip_norm"))],
            ["sampling rate q", _e(p.get("sample_rate"))],
            [
                "steps per release / total",
                f"{_e(p.get('steps_per_release'))} / {_e(p.get('steps_total'))}",
            ],
            ["evaluation noise multiplier", _e(p.get("eval_noise_multiplier"))],
            ["rounds", _e(p.get("rounds"))],
            ["events", _e(p.get("events"))],
            ["sampling", _e(p.get("sampling_method"))],
            ["mechanism", _e(p.get("mechanism"))],
        ]
        if name == "local":
            d = layer["devices"]
            rows += [
                ["devices accounted / total", f"{_e(d['accounted'])} / {_e(d['total'])}"],
                ["device ε min / median / max", _e(d["epsilon"])],
                ["devices that hit their budget", _e(layer["budget_stopped"])],
            ]
        if name == "user":
            cross = layer.get("cross_check") or {}
            rows.append(
                [
                    "Opacus RDP cross-check",
                    f"{_e(cross.get('opacus_rdp'))} ({_e(cross.get('note'))})",
                ]
            )
        parts.append(f"<h3>{_e(name)} layer</h3>" + _table(["", ""], ([_e(k), v] for k, v in rows)))
        if name == "user":
            parts.append(
                _table(
                    ["round", "kind", "ε (ledger)", "ε (recomputed)"],
                    (
                        [
                            _e(r["round"]),
                            _e(r.get("kind")),
                            _e(r["epsilon"]),
                            _e(r["epsilon_recomputed"]),
                        ]
                        for r in layer["epsilon_per_round"]
                    ),
                )
            )
        parts.append(
            "<p class='muted'>Privacy profile of "
            + _e(layer.get("privacy_profile_of"))
            + ": "
            + ", ".join(
                f"δ={_e(x['delta'])}: ε={_e(x['epsilon'])}" for x in layer["privacy_profile"]
            )
            + "</p>"
        )
    return "".join(parts) or "<p>No DP layer.</p>"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (no external reference of any kind)."""
    checks = _table(
        ["check", "result", "detail"],
        (
            [
                _e(c["name"]),
                '<span class="ok">pass</span>' if c["passed"] else '<span class="bad">FAIL</span>',
                _e(c["detail"]),
            ]
            for c in report.get("checks", [])
        ),
    )
    releases = _table(
        ["release", "from → to", "status", "covered", "layer", "detail"],
        (
            [
                _e(r["release"]),
                f"{_e(r['from'])} → {_e(r['to'])}",
                _e(r["status"]),
                '<span class="ok">yes</span>' if r["covered"] else '<span class="bad">no</span>',
                _e(r["layer"]),
                _e(r["detail"]),
            ]
            for r in report.get("releases", [])
        ),
    )
    empirical = _table(
        ["layer", "canaries", "ε lower bound", "confidence", "claimed ε", "passed",
         "baseline bound (no DP)", "status"],
        (
            [
                _e(n),
                _e(v["canaries"]),
                _e(v["epsilon_lower_bound"]),
                _e(v["confidence"]),
                _e(v["claimed_epsilon"]),
                _e(v["passed"]),
                _e((v.get("baseline") or {}).get("epsilon_lower_bound")),
                _e(v["status"]),
            ]
            for n, v in (report.get("empirical") or {}).items()
        ),
    )  # fmt: skip
    mia = _table(
        ["threat model", "defended by", "AUC ± standard error", "TPR at 1% FPR",
         "under the (ε, δ) curve", "baseline AUC", "baseline TPR at 1% FPR", "status"],
        (
            [
                _e(n),
                _e(v.get("defended_by")),
                _e(v["auc"]) + (f" ± {v['auc_se']:.3f}" if v.get("auc_se") is not None else ""),
                _e(v["tpr_at_1pct_fpr"]),
                _e(v.get("under_bound")),
                _e((v.get("baseline") or {}).get("auc")),
                _e((v.get("baseline") or {}).get("tpr_at_1pct_fpr")),
                _e(v["status"]) + (f"<br><em>{_e(v['note'])}</em>" if v.get("note") else ""),
            ]
            for n, v in (report.get("membership_inference") or {}).items()
        ),
    )  # fmt: skip
    mia_plots = "".join(_roc_plots(report))
    leak = report.get("leakage") or {}
    leak_rows = _table(
        ["array", "rows", "uploads", "row density min / median / max", "mean", "sparse uploads"],
        (
            [
                _e(n),
                _e(a["rows"]),
                _e(a["uploads"]),
                _e(a["row_density"]),
                _e(a["row_density_mean"]),
                _e(a["sparse_uploads"]),
            ]
            for n, a in (leak.get("arrays") or {}).items()
        ),
    )
    uploads = _table(
        ["round", "uploads", "bytes total", "bytes per upload", "arrays (shape)"],
        (
            [
                _e(u["round"]),
                _e(u["uploads"]),
                _e(u["bytes_total"]),
                _e(u["bytes"]),
                _e(u["arrays"]),
            ]
            for u in leak.get("uploads_by_round") or []
        ),
    )
    allow = report.get("uploads_allow_list") or {}
    s = report.get("sampling_test") or {}
    scope = report.get("scope") or {}
    trust = report.get("trust_model") or {}
    utility = report.get("utility") or {}
    sign = report.get("sign_off") or {}
    seg = (utility.get("segments") or {}).get("segments") or {}
    segments = _table(
        ["segment", "devices", "training rows", "test metrics"],
        (
            [_e(n), _e(v["devices"]), _e(v.get("training_rows")), _e(v["metrics"])]
            for n, v in seg.items()
        ),
    )
    refs = _table(
        ["reference", "run", "final test metrics"],
        (
            [_e(n), _e(v.get("dir")), _e(v.get("final"))]
            for n, v in (utility.get("baselines") or {}).items()
        ),
    )

    def items(values: Iterable[object]) -> str:
        return "<ul>" + "".join(f"<li>{_e(v)}</li>" for v in values) + "</ul>"

    trust_rows = _table(
        ["layer", "trusted", "protects against", "noise added", "noise source"],
        (
            [
                _e(n),
                _e(t.get("trusted")),
                _e(t.get("protects_against")),
                _e(t.get("noise_added")),
                _e(t.get("noise_source")),
            ]
            for n, t in (trust.get("layers") or {}).items()
        ),
    )
    plots = "".join(_plots(report))
    body = f"""
<h1>Privacy audit report</h1>
{_headline(report)}
<h2>Checks</h2>
{checks}
<h2>Guarantees per layer</h2>
{plots}
{_layers(report)}
<h2>Releases and whether each is covered</h2>
{releases}
<h2>Scope</h2>
<p>Accounted:</p>{items(scope.get("accounted") or ["nothing"])}
<p>Not covered:</p>{items(scope.get("not_covered") or [])}
<p class="muted">Evaluation: {_e(scope.get("evaluation"))}</p>
<h2>Trust model</h2>
{trust_rows}
<p>Sampling: {_e(trust.get("sampling"))}. Randomness: {_e(trust.get("randomness"))}.</p>
<p>Noise source check: {_e(trust.get("noise_source_check"))}</p>
<p class="muted">{_e(trust.get("who_sees_what"))}</p>
<h2>What left the devices</h2>
<p>Arrays the devices sent: {_e(allow.get("arrays_up"))}; private parameter names sent:
{_e(allow.get("local_names_up"))} (private prefixes {_e(allow.get("local_prefixes"))}, from
{_e(allow.get("local_prefixes_source"))}); arrays without a matching down array:
{_e(allow.get("mismatched_count"))}.</p>
<p><strong>{_e(leak.get("statement"))}</strong>
<span class="muted">({_e(leak.get("status"))})</span></p>
{leak_rows}
{uploads}
<h2>Sampling check</h2>
<p>Method: {_e(s.get("method"))}.</p>
<p>N = {_e(s.get("devices"))}, q = {_e(s.get("sample_rate"))}, cohort sizes
{_e(s.get("cohort_sizes"))}, mean {_e(s.get("observed_mean"))} against N·q =
{_e(s.get("expected_mean"))}: <strong>p = {_e(s.get("p_value"))}</strong>.</p>
<h2>Empirical audit</h2>
{empirical}
<h2>Membership inference</h2>
{mia}
{mia_plots}
<h2>Utility</h2>
<p>Final: {_e(utility.get("final"))} (standard errors {_e(utility.get("final_se"))}).</p>
<p class="muted">Source: {_e(utility.get("final_source"))}. {_e(utility.get("status"))}</p>
<p>By user activity (DP costs light users most):</p>
{segments}
<p>References:</p>
{refs}
<h2>Limitations</h2>
{items(report.get("limitations") or [])}
<h2>Sign-off</h2>
{_table(["field", "value"], ([_e(k), _e(v)] for k, v in sign.items()))}
<p class="muted">Report format version {_e(report.get("report_version"))}; tool
{_e((report.get("tool") or {}).get("versions"))}.</p>
"""
    title = f"Privacy audit: {report.get('verdict')}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
