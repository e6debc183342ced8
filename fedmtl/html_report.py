"""The interactive report: ``report.html``, one self-contained file (plotly.js inline, no network).

:func:`write_html_report` writes, from the runs of a report (:class:`fedmtl.report.Configuration`
objects) and the text of its ``report.md``:

- the report's text and tables (``report.md`` turned into HTML, its static figures left out);
- the figures, interactive (zoom, hover for values; :mod:`plotly`): the mean client metric
  per round with the 10th-90th percentile band, mean vs worst-10% per configuration, the
  clients' CDF, the client × task heatmap (mean over seeds, one configuration at a time),
  fairness over rounds (worst-10%, Jain's index, best-worst gap) and, when recorded, the group
  gaps over rounds;
- a per-client view: choose a client (the list, or click it in the heatmap or the CDF) to see,
  per configuration and seed, the tasks it holds, its train and test examples, its
  participation (``participation.csv``: rounds trained, last round) and its final metric per
  task, with a chart of that metric per configuration. Hovering a heatmap cell shows the same.
"""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from fedmtl.atomic import write_bytes
from fedmtl.plots import (
    FAIRNESS_STATS,
    GAP_NAMES,
    OVERALL,
    VIEWS,
    client_task_seeds,
    client_task_table,
    fairness_by_round,
    group_gaps_by_round,
    higher_is_better,
    plane_panels,
    plane_statistics,
    report_clients,
    scale_of,
    seeds_note,
    task_metrics,
    unit_of,
)

HTML_FILE = "report.html"
"""The interactive report's file name in the report folder."""
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
DASHES = {"personal": "solid", "global": "dash", "trained": "dot"}
"""Plotly's line style of each of :data:`fedmtl.plots.VIEWS`."""


# -- report.md as HTML -------------------------------------------------------------------
def _inline(text: str) -> str:
    """Escape ``text`` and render Markdown's inline code and bold."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", body)]


def _table(lines: list[str]) -> str:
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table class="report-table"><thead><tr>{head}</tr></thead>' \
           f"<tbody>{body}</tbody></table></div>"


def markdown_to_html(text: str) -> str:
    """The Markdown of ``report.md`` (headings, paragraphs, pipe tables, inline code) as HTML;
    image lines and the ``Figures`` section (static files) are left out."""
    blocks: list[str] = []
    paragraph: list[str] = []
    table: list[str] = []
    skipping = False
    titled = False

    def flush() -> None:
        if paragraph:
            blocks.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if table:
            blocks.append(_table(table) if len(table) >= 2 else f"<p>{_inline(table[0])}</p>")
            table.clear()

    for line in text.splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            flush()
            skipping = heading[2].strip().lower() == "figures"
            if len(heading[1]) == 1 and not titled:  # the page has its own title
                titled = True
                continue
            if not skipping:
                level = max(2, len(heading[1]))  # the page's own title is the h1
                blocks.append(f"<h{level}>{_inline(heading[2])}</h{level}>")
            continue
        if skipping or line.startswith("!["):
            continue
        if line.lstrip().startswith("|"):
            if paragraph:
                flush()
            table.append(line)
        elif not line.strip():
            flush()
        else:
            if table:
                flush()
            paragraph.append(line.strip())
    flush()
    return "\n".join(blocks)


# -- interactive figures -------------------------------------------------------------------
def _colour(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def _fill(k: int, alpha: float = 0.15) -> str:
    value = _colour(k).lstrip("#")
    red, green, blue = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({red},{green},{blue},{alpha})"


def integer_ticks(largest: float) -> dict[str, Any]:
    """Plotly axis settings with ticks on whole numbers only (rounds, client ids): a step of 1,
    2, 5, 10, 20, ... giving at most about 12 ticks up to ``largest``."""
    step = 1
    while largest / step > 12:
        step *= 2.5 if str(step).startswith("2") else 2  # 1, 2, 5, 10, 20, 50, ...
    return {"tickmode": "linear", "tick0": 0, "dtick": int(step), "tickformat": "d"}


def _last_round(configurations: Sequence[Any]) -> int:
    rounds = [int(r.curves["round"].max()) for c in configurations for r in c.runs if not r.curves.empty]
    return max(rounds, default=1)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 80, "b": 60}, hovermode="closest",
                      legend={"orientation": "h", "y": -0.18, "x": 0, "font": {"size": 11}})
    return fig


def round_figure(configurations: Sequence[Any], tasks: dict[str, str]) -> go.Figure:
    """Per task: the mean client metric per round (mean over seeds) and the 10th-90th
    percentile band over clients (pooled over seeds); the global model's mean dashed."""
    shared = len(set(tasks.values())) == 1
    fig = make_subplots(rows=1, cols=len(tasks), shared_yaxes=shared, subplot_titles=[f"task '{t}'" for t in tasks])
    for k, c in enumerate(configurations):
        curves = pd.concat([r.curves.assign(seed=r.seed) for r in c.runs])
        views = [r.global_curves.assign(seed=r.seed) for r in c.runs if not r.global_curves.empty]
        view = pd.concat(views) if views else None
        for col, (task, metric) in enumerate(tasks.items(), start=1):
            rows = curves[curves["task"] == task]
            if rows.empty:
                continue
            scale = scale_of(metric)
            mean = rows.groupby(["round", "seed"])["value"].mean().groupby("round").mean() * scale
            band = rows.groupby("round")["value"]
            low, high = band.quantile(0.1) * scale, band.quantile(0.9) * scale
            x = [int(r) for r in mean.index]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(high) + list(low)[::-1], fill="toself", mode="lines",
                                     fillcolor=_fill(k), line={"width": 0}, hoverinfo="skip", showlegend=False,
                                     legendgroup=c.label), row=1, col=col)
            fig.add_trace(go.Scatter(x=x, y=mean.to_numpy(), mode="lines+markers", name=plotly_text(c.label),
                                     legendgroup=c.label, showlegend=col == 1, line={"color": _colour(k)},
                                     hovertemplate=f"{html.escape(c.label)}<br>round %{{x}}<br>mean %{{y:.3f}}"
                                                   "<extra></extra>"), row=1, col=col)
            if view is not None and not view[view["task"] == task].empty:
                own = view[view["task"] == task]
                gmean = own.groupby(["round", "seed"])["value"].mean().groupby("round").mean() * scale
                fig.add_trace(go.Scatter(x=[int(r) for r in gmean.index], y=gmean.to_numpy(), mode="lines+markers",
                                         name=plotly_text(f"{c.label} (global model)"), legendgroup=c.label,
                                         showlegend=col == 1, line={"color": _colour(k), "dash": "dash"}),
                              row=1, col=col)
            fig.update_yaxes(title_text=f"client test {unit_of(metric)}", row=1, col=col)
    fig.update_xaxes(title_text="server round", **integer_ticks(_last_round(configurations)))
    return _layout(fig, "Mean client metric per round (band: 10th-90th percentile of clients)", 460)


def plane_figure(configurations: Sequence[Any], tasks: dict[str, str]) -> go.Figure:
    """Per task and overall (:func:`fedmtl.plots.plane_panels`): mean vs worst-10% client metric
    per configuration (std over seeds as error bars; the global model's hollow)."""
    panels = plane_panels(configurations)
    titles = ["overall (client mean over its tasks)" if p == OVERALL else f"task '{p}'" for p in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles)
    for k, c in enumerate(configurations):
        for col, (panel, metric) in enumerate(panels.items(), start=1):
            stats = [s for s in (plane_statistics(r, panel) for r in c.runs) if s]
            if not stats:
                continue
            scale = scale_of(metric)
            xs = pd.Series([s["mean"] * scale for s in stats])
            ys = pd.Series([s["worst10"] * scale for s in stats])
            fig.add_trace(go.Scatter(
                x=[xs.mean()], y=[ys.mean()], mode="markers", name=plotly_text(c.label), legendgroup=c.label,
                showlegend=col == 1, marker={"size": 11, "color": _colour(k)},
                error_x={"type": "data", "array": [xs.std(ddof=1) if len(xs) > 1 else 0]},
                error_y={"type": "data", "array": [ys.std(ddof=1) if len(ys) > 1 else 0]},
                hovertemplate=f"{html.escape(c.label)}<br>{len(stats)} seed(s)<br>mean %{{x:.3f}}"
                              "<br>worst-10% %{y:.3f}<extra></extra>"), row=1, col=col)
            views = [v for v in (plane_statistics(r, panel, "global") for r in c.runs) if v]
            if views:  # the global model: hollow
                fig.add_trace(go.Scatter(
                    x=[sum(v["mean"] for v in views) / len(views) * scale],
                    y=[sum(v["worst10"] for v in views) / len(views) * scale], mode="markers",
                    name=plotly_text(f"{c.label} (global model)"), legendgroup=c.label, showlegend=col == 1,
                    marker={"size": 11, "color": "white", "line": {"color": _colour(k), "width": 2}},
                    hovertemplate=f"{html.escape(c.label)}, global model<br>mean %{{x:.3f}}<br>worst-10% %{{y:.3f}}"
                                  "<extra></extra>"), row=1, col=col)
            better = "higher" if higher_is_better(metric) else "lower"
            fig.update_xaxes(title_text=f"mean client test {unit_of(metric)}", row=1, col=col)
            fig.update_yaxes(title_text=f"worst-10% mean ({better} is better)", row=1, col=col)
    return _layout(fig, "Fairness vs accuracy per configuration (mean ± std over seeds)", 460)


def cdf_figure(configurations: Sequence[Any], tasks: dict[str, str]) -> go.Figure:
    """Per task: the clients' final metric as an empirical CDF, one line per configuration (its
    first seed); each point is a client (hover: its id; click: the per-client view)."""
    shared = True
    fig = make_subplots(rows=1, cols=len(tasks), shared_yaxes=shared, subplot_titles=[f"task '{t}'" for t in tasks])
    for k, c in enumerate(configurations):
        run = c.runs[0]
        for col, (task, metric) in enumerate(tasks.items(), start=1):
            rows = run.final[run.final["task"] == task].sort_values(["value", "client"])
            if rows.empty:
                continue
            values = rows["value"].to_numpy() * scale_of(metric)
            fraction = [(i + 1) / len(values) for i in range(len(values))]
            fig.add_trace(go.Scatter(
                x=values, y=fraction, mode="lines+markers", line={"shape": "hv", "color": _colour(k)},
                marker={"size": 6}, name=plotly_text(c.label), legendgroup=c.label, showlegend=col == 1,
                customdata=rows["client"].astype(int).to_numpy(),
                hovertemplate=f"{html.escape(c.label)} (seed {run.seed})<br>client %{{customdata}}: %{{x:.3f}}"
                              "<extra></extra>"), row=1, col=col)
            fig.update_xaxes(title_text=f"client test {unit_of(metric)}", row=1, col=col)
    fig.update_yaxes(title_text="fraction of clients at or below", range=[0, 1.03], row=1, col=1)
    return _layout(fig, "Clients' final metric (CDF; click a point to see that client)", 460)


def _seeds_hover(seeds: float, runs: int) -> str:
    """The hover line of a heatmap cell averaging fewer than the configuration's ``runs`` seeds
    (empty otherwise)."""
    return f"mean of {int(seeds)} of {runs} seeds" if math.isfinite(seeds) and seeds < runs else ""


def heatmap_figure(configurations: Sequence[Any], tasks: dict[str, str],
                   records: dict[int, list[dict[str, Any]]]) -> go.Figure:
    """Clients × tasks final metric (mean over seeds), one configuration at a time (the menu),
    on one colour scale fitted to the data; hover shows the client's participation in that
    configuration's runs (``records``: :func:`client_records`)."""
    metrics = set(tasks.values())
    scale = scale_of(next(iter(metrics))) if len(metrics) == 1 else 1.0
    tables = [client_task_table(c, list(tasks)) * scale for c in configurations]
    values = pd.concat([t.stack() for t in tables if not t.empty]) if any(not t.empty for t in tables) else None
    low, high = (float(values.min()), float(values.max())) if values is not None and len(values) else (0.0, 1.0)
    fig = go.Figure()
    notes = []  # per configuration: what its cells average
    for k, (c, table) in enumerate(zip(configurations, tables, strict=True)):
        grid = table.to_numpy()
        clients = [int(i) for i in table.index]
        text = [[("–" if math.isnan(v) else f"{v:.3g}") for v in row] for row in grid]
        participation = _notes(records, c.label)
        seeds = client_task_seeds(c, list(tasks))
        notes.append(seeds_note(c, seeds))
        counts = seeds.reindex(index=table.index).to_numpy()
        custom = [["<br>".join(filter(None, [participation.get(client, ""), _seeds_hover(counts[i, j], len(c.runs))]))
                   for j in range(len(tasks))] for i, client in enumerate(clients)]
        fig.add_trace(go.Heatmap(
            z=[[None if math.isnan(v) else float(v) for v in row] for row in grid], x=list(tasks), y=clients,
            zmin=low, zmax=high, colorscale="Viridis", visible=k == 0, customdata=custom, name=plotly_text(c.label),
            text=text, texttemplate="%{text}" if len(clients) <= 30 else None,
            colorbar={"title": {"text": unit_of(next(iter(metrics))) if len(metrics) == 1 else "metric"}},
            hovertemplate="client %{y}, task %{x}: %{z:.3f}<br>%{customdata}<extra>" + html.escape(c.label)
                          + "</extra>"))
    buttons = [{"label": plotly_text(c.label[:60]), "method": "update",
                "args": [{"visible": [j == k for j in range(len(configurations))]},
                         {"title.text": f"Every client's final metric: {html.escape(c.label)} ({note})"}]}
               for k, (c, note) in enumerate(zip(configurations, notes, strict=True))]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 0, "y": 1.0, "xanchor": "left", "yanchor": "bottom",
                                    "pad": {"b": 8}, "direction": "down", "showactive": True}])
    fig.update_yaxes(title_text="client id", autorange="reversed", **integer_ticks(max(report_clients(configurations),
                                                                                        default=1)))
    fig.update_xaxes(title_text="task")
    n = max((len(t.index) for t in tables), default=1)
    _layout(fig, f"Every client's final metric: {html.escape(configurations[0].label)} ({notes[0]})",
            min(360 + 18 * n, 1400))
    fig.update_layout(margin={"t": 130}, title={"y": 0.99, "yref": "container", "yanchor": "top"})
    return fig


def fairness_rounds_figure(configurations: Sequence[Any], tasks: dict[str, str]) -> go.Figure:
    """Per task (and overall): worst-10% mean, Jain's index and best-worst gap per round, one
    line per configuration (mean over seeds; the global model's dashed)."""
    frames = [fairness_by_round(r, tasks).assign(configuration=k) for k, c in enumerate(configurations)
              for r in c.runs]
    table = pd.concat(frames) if frames else pd.DataFrame(columns=["panel", "stat"])
    panels = [p for p in [*tasks, OVERALL] if p in set(table["panel"])] or list(tasks)
    titles = [f"{'overall' if p == OVERALL else repr(p)}: {label}" for _, label in FAIRNESS_STATS for p in panels]
    fig = make_subplots(rows=len(FAIRNESS_STATS), cols=len(panels), shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=0.08)
    for row, (stat, _) in enumerate(FAIRNESS_STATS, start=1):
        for col, panel in enumerate(panels, start=1):
            rows = table[(table["panel"] == panel) & (table["stat"] == stat)]
            for (k, view), group in (rows.groupby(["configuration", "view"]) if len(rows) else []):
                mean = group.groupby("round")["value"].mean()
                label = configurations[k].label + ("" if view == "personal" else f" ({VIEWS[view][3]})")
                fig.add_trace(go.Scatter(x=[int(r) for r in mean.index], y=mean.to_numpy(), mode="lines+markers",
                                         name=plotly_text(label), legendgroup=label, showlegend=row == 1 and col == 1,
                                         line={"color": _colour(k), "dash": DASHES[view]}),
                              row=row, col=col)
    fig.update_xaxes(title_text="server round", row=len(FAIRNESS_STATS))
    fig.update_xaxes(**integer_ticks(_last_round(configurations)))
    fig.update_yaxes(tickformat=".4~g")
    return _layout(fig, "Fairness across clients over rounds (mean over seeds)", 760)


def group_figure(configurations: Sequence[Any]) -> go.Figure | None:
    """Each group gap over rounds per configuration: pooled (solid) and the mean client's
    (dashed); ``None`` when no run recorded group gaps."""
    frames = [group_gaps_by_round(r).assign(configuration=k) for k, c in enumerate(configurations) for r in c.runs]
    table = pd.concat(frames) if frames else pd.DataFrame()
    if table.empty:
        return None
    order = {g: i for i, g in enumerate(GAP_NAMES)}
    keys = sorted(set(zip(table["task"], table["gap"], table["attribute"], strict=True)),
                  key=lambda key: (key[0], order[key[1]], key[2]))
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True,
                        subplot_titles=[f"'{t}': {GAP_NAMES[g]} ({a})" for t, g, a in keys])
    for i, (task, gap, attribute) in enumerate(keys):
        shown = table[(table["task"] == task) & (table["gap"] == gap) & (table["attribute"] == attribute)]
        for (k, stat), group in shown.groupby(["configuration", "stat"]):
            if stat == "worst":
                continue
            mean = group.groupby("round")["value"].mean()
            label = f"{configurations[k].label} ({'pooled' if stat == 'pooled' else 'mean over clients'})"
            fig.add_trace(go.Scatter(x=[int(r) for r in mean.index], y=mean.to_numpy(), mode="lines+markers",
                                     name=plotly_text(label), legendgroup=label, showlegend=i == 0,
                                     line={"color": _colour(k), "dash": "solid" if stat == "pooled" else "dash"}),
                          row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="server round", **integer_ticks(_last_round(configurations)))
    fig.update_yaxes(title_text="gap (0 = equal groups)", col=1)
    return _layout(fig, "Group fairness over rounds (mean over seeds; lower is fairer)", 360 + 280 * rows)


# -- the per-client view -------------------------------------------------------------------
def _last_value(metrics: pd.DataFrame, split: str) -> dict[int, float]:
    rows = metrics[(metrics["split"] == split) & (metrics["task"] == "all") & (metrics["metric"] == "num-examples")]
    if rows.empty:
        return {}
    last = rows.dropna(subset=["value"]).sort_values("round").groupby("client")["value"].last()
    return {int(c): float(v) for c, v in last.items()}


def client_records(configurations: Sequence[Any], tasks: dict[str, str]) -> dict[int, list[dict[str, Any]]]:
    """Per client id, one record per run that evaluated it: configuration, seed, tasks held,
    train and test examples, rounds trained and last round trained, final metric per task
    (scaled: accuracy in %) and, with a global view, the global model's."""
    out: dict[int, list[dict[str, Any]]] = {}
    for c in configurations:
        for run in c.runs:
            path = Path(run.path) / "metrics.csv"
            metrics = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["split", "task", "metric"])
            train, test = _last_value(metrics, "train"), _last_value(metrics, "test")
            trained: dict[int, tuple[int, int | None]] = {}
            if run.participation is not None:
                for row in run.participation.itertuples():
                    last = None if pd.isna(row.last_round) else int(row.last_round)
                    trained[int(row.client)] = (int(row.rounds_trained), last)
            for client, rows in run.final.groupby("client"):
                client = int(client)
                own = {t: _number(v, tasks.get(t, "")) for t, v in zip(rows["task"], rows["value"], strict=True)}
                view = run.global_final[run.global_final["client"] == client] if not run.global_final.empty else None
                rounds, last = trained.get(client, (None, None))
                out.setdefault(client, []).append({
                    "configuration": c.label, "seed": run.seed, "tasks": own,
                    "global": {} if view is None else {t: _number(v, tasks.get(t, ""))
                                                       for t, v in zip(view["task"], view["value"], strict=True)},
                    "train_examples": train.get(client), "test_examples": test.get(client),
                    "rounds_trained": rounds, "last_round": last})
    return out


def plotly_text(text: str) -> str:
    """``text`` for a plotly legend or menu, which read a few HTML tags (``<b>``, ``<a href>``,
    ``<br>``): escaped, so that a run's label shows as written and never becomes a link."""
    return html.escape(text, quote=False)


def script_json(data: Any) -> str:
    """``data`` as JSON to sit inside a ``<script>`` element: every ``<``, ``>`` and ``&`` written
    as a JSON escape, so that no text of a run (``<!--``, ``</script>`` in a run name) can end
    the element or change how the browser reads it (the parsed JSON is the same)."""
    text = json.dumps(data, allow_nan=False, default=_json_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _number(value: float, metric: str) -> float | None:
    """``value`` scaled for display (accuracy in %); ``None`` for NaN."""
    value = float(value)
    return None if math.isnan(value) else value * scale_of(metric)


def _examples(record: dict[str, Any]) -> str:
    """``"TRAIN train / TEST test"``: a client's train examples are known from its training
    replies, so a client that never trained has none (``–``)."""
    train, test = record["train_examples"], record["test_examples"]
    return (f"{'–' if train is None else int(train)} train / {'–' if test is None else int(test)} test"
            + (" (never trained)" if train is None and record["rounds_trained"] == 0 else ""))


def _notes(records: dict[int, list[dict[str, Any]]], configuration: str) -> dict[int, str]:
    """One hover line per client of ``configuration`` (its label): rounds trained and examples
    in each of its runs (the first 4 seeds)."""
    out = {}
    for client, every in records.items():
        parts = []
        for r in [r for r in every if r["configuration"] == configuration][:4]:
            trained = "participation not recorded" if r["rounds_trained"] is None else (
                f"trained {r['rounds_trained']} rounds" + (f" (last {r['last_round']})" if r["last_round"] else ""))
            parts.append(f"seed {r['seed']}: {trained}, {_examples(r)} examples")
        if parts:
            out[client] = "<br>".join(dict.fromkeys(parts))
    return out


# -- the page -------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1500px;
       padding: 0 24px 48px; color: #222; }
h1 { margin-top: 24px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p { line-height: 1.45; max-width: 1100px; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.table-wrap { overflow-x: auto; }
table.report-table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
table.report-table th, table.report-table td { border: 1px solid #ddd; padding: 4px 8px; text-align: right;
       white-space: nowrap; }
table.report-table th { background: #f6f6f6; position: sticky; top: 0; }
table.report-table td:first-child, table.report-table th:first-child { text-align: left; }
.figure { margin: 16px 0 28px; }
#client-view { border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px; background: #fcfcfc; }
#client-select { font-size: 15px; padding: 2px 6px; }
nav a { margin-right: 14px; }
"""

SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById("client-data").textContent);
  const select = document.getElementById("client-select");
  const fmt = (v) => (v === null || v === undefined) ? "–" : (Math.round(v * 100) / 100).toString();
  function esc(s) { const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }
  function show(client) {
    const runs = data.clients[String(client)] || [];
    select.value = String(client);
    const head = ["configuration", "seed", "tasks held", "train / test examples", "rounds trained", "last round"]
      .concat(data.tasks.map((t) => t + " " + data.units[t]));
    let rows = "";
    for (const r of runs) {
      const held = Object.keys(r.tasks).join(", ");
      const train = r.train_examples === null && r.rounds_trained === 0 ? "– (never trained)" : fmt(r.train_examples);
      const cells = [r.configuration, r.seed, held, train + " / " + fmt(r.test_examples),
        r.rounds_trained === null ? "not recorded" : r.rounds_trained,
        r.last_round === null ? (r.rounds_trained === 0 ? "never" : "–") : r.last_round]
        .concat(data.tasks.map((t) => (t in r.tasks ? fmt(r.tasks[t]) : "–")
          + (t in r.global ? " (global " + fmt(r.global[t]) + ")" : "")));
      rows += "<tr>" + cells.map((c) => "<td>" + esc(c) + "</td>").join("") + "</tr>";
    }
    document.getElementById("client-table").innerHTML =
      "<thead><tr>" + head.map((h) => "<th>" + esc(h) + "</th>").join("") + "</tr></thead><tbody>" + rows + "</tbody>";
    document.getElementById("client-title").textContent = "Client " + client + ": " + runs.length
      + " run(s) evaluated it";
    const traces = data.tasks.map((t) => {
      const means = data.configurations.map((c) => {
        const values = runs.filter((r) => r.configuration === c && t in r.tasks).map((r) => r.tasks[t]);
        return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
      });
      return {type: "bar", orientation: "h", name: "task " + t, y: data.configurations, x: means,
              hovertemplate: "%{y}<br>" + t + ": %{x:.3f}<extra></extra>"};
    });
    const height = 140 + 26 * data.configurations.length * Math.max(1, data.tasks.length);
    Plotly.react("client-plot", traces, {barmode: "group", height: Math.min(height, 1200),
      margin: {l: 20, r: 20, t: 40, b: 50}, title: {text: "Client " + client + ": final metric per configuration"
      + " (mean over seeds)", x: 0.01}, xaxis: {title: {text: "client test metric"}},
      yaxis: {automargin: true, autorange: "reversed"}}, {displaylogo: false, responsive: true});
  }
  select.addEventListener("change", () => show(select.value));
  for (const id of data.clickable) {
    const div = document.getElementById(id);
    if (div && div.on) {
      div.on("plotly_click", (event) => {
        const point = event.points[0];
        const client = typeof point.customdata === "number" ? point.customdata : point.y;
        if (String(client) in data.clients) { show(client); }
      });
    }
  }
  show(data.initial);
})();
"""


def _figure_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def write_html_report(path: Path, configurations: Sequence[Any], markdown: str,
                      highlight: int | None = None) -> Path:
    """Write the interactive report to ``path``; return it.

    Parameters
    ----------
    path : Path
        The file to write (``report.html`` in the report folder).
    configurations : sequence
        The report's configurations (:class:`fedmtl.report.Configuration`), each with its runs.
    markdown : str
        The text of ``report.md`` (its tables become HTML tables).
    highlight : int, optional
        The client shown first in the per-client view (default: the lowest id).
    """
    with warnings.catch_warnings():  # plotly adds a warnings filter when first used: put them back after
        return _write(path, configurations, markdown, highlight)


def _write(path: Path, configurations: Sequence[Any], markdown: str, highlight: int | None) -> Path:
    tasks = task_metrics(configurations)
    records = client_records(configurations, tasks)
    figures = [("round-curves", "Per round", round_figure(configurations, tasks)),
               ("fairness-plane", "Fairness vs accuracy", plane_figure(configurations, tasks)),
               ("client-cdf", "Clients' final metric", cdf_figure(configurations, tasks)),
               ("client-heatmap", "Client × task", heatmap_figure(configurations, tasks, records)),
               ("fairness-rounds", "Fairness over rounds", fairness_rounds_figure(configurations, tasks))]
    group = group_figure(configurations)
    if group is not None:
        figures.append(("group-fairness", "Group fairness over rounds", group))
    clients = report_clients(configurations)
    initial = highlight if highlight in records else (clients[0] if clients else None)
    data = {"clients": {str(k): v for k, v in records.items()}, "tasks": list(tasks),
            "units": {t: f"({unit_of(m)})" for t, m in tasks.items()},
            "configurations": [c.label for c in configurations], "initial": initial,
            "clickable": ["client-heatmap", "client-cdf"]}
    payload = script_json(data)
    options = "".join(f'<option value="{c}">client {c}</option>' for c in clients)
    nav = " ".join(f'<a href="#{div}">{html.escape(name)}</a>' for div, name, _ in figures)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>fedmtl report</title>", f"<style>{STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head>", "<body>",
        "<h1>fedmtl report</h1>",
        f'<nav>Figures: {nav} <a href="#clients">Per client</a></nav>',
        '<section id="tables">', markdown_to_html(markdown), "</section>",
        '<section id="figures"><h2>Figures (interactive)</h2>',
        "<p>Hover for values, drag to zoom, double-click to reset; click a configuration in a legend "
        "to hide it. In the heatmap, the menu chooses the configuration; clicking a cell (or a point "
        "of the CDF) shows that client below.</p>",
        *(f'<div class="figure">{_figure_html(fig, div)}</div>' for div, _, fig in figures),
        "</section>",
        '<section id="clients"><h2>Per client</h2>',
        f'<p><label for="client-select">Client: </label><select id="client-select">{options}</select></p>',
        '<div id="client-view"><h3 id="client-title"></h3>',
        '<div class="table-wrap"><table class="report-table" id="client-table"></table></div>',
        '<div id="client-plot"></div></div></section>',
        f'<script type="application/json" id="client-data">{payload}</script>',
        f"<script>{SCRIPT}</script>", "</body>", "</html>",
    ]
    write_bytes(path, "\n".join(parts).encode("utf-8"))  # an error (a full disk) names the file
    return path


def _json_default(value: Any) -> Any:
    """NumPy scalars as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to the report's data")
