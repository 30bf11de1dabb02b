"""The figures of `bench/results/`: accuracy over simulated time, bytes against accuracy, the
affinity graph of homes joined by shared phones, and wall time against the number of homes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .config import METHODS

STYLE = {
    "local": ("tab:gray", "-"),
    "centralized": ("black", "--"),
    "fedavg": ("tab:blue", "-"),
    "fedavg_ft": ("tab:blue", "--"),
    "fedasync": ("tab:cyan", "-"),
    "gossip": ("tab:olive", "-"),
    "mlmule": ("tab:red", "-"),
    "mlmule_no_relay": ("tab:brown", ":"),
    "mlmule_carry_merge": ("tab:green", "-."),
    "mlmule_no_filter": ("tab:orange", ":"),
    "mlmule_personal": ("tab:purple", "-."),
    "mlmule_no_gate": ("tab:pink", "--"),
    "mlmule_no_fine_tune": ("tab:red", ":"),
    "mlmule_weights_only": ("tab:red", "--"),
    "mlmule_knowledge_only": ("tab:purple", "-"),
}
TITLES = {
    "occupancy": "occupancy (fixed data)",
    "phone_activity": "phone activity (mobile data)",
    "digits": "digits, Dirichlet label skew",
    "paper": "paper: digit subsets per group",
    "hapt": "real phones (UCI HAPT)",
}


def plot_all(document: Mapping[str, Any], directory: Path) -> list[Path]:
    """Every learning figure of a `learning.json` document, written into `directory`."""
    written = [
        _save(curves(document), directory / "learning_curves.png"),
        _save(bytes_vs_accuracy(document), directory / "learning_bytes.png"),
    ]
    graph = affinity_graph(document)
    if graph is not None:
        written.append(_save(graph, directory / "learning_affinity.png"))
    return written


def _tasks(document: Mapping[str, Any]) -> list[str]:
    return [task for task in document["tasks"] if task in TITLES]


def _methods(document: Mapping[str, Any]) -> list[str]:
    return [method for method in METHODS if method in document["per_method"]]


def curves(document: Mapping[str, Any]) -> Figure:
    tasks = _tasks(document)
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for method in _methods(document):
            entry = document["per_method"][method].get(task)
            if entry is None:
                continue
            curve = entry["curve"]
            days = [hour / 24 for hour in curve["hours"]]
            color, line = STYLE[method]
            axis.plot(days, curve["mean"], color=color, linestyle=line, label=method, lw=1.6)
            axis.fill_between(days, curve["min"], curve["max"], color=color, alpha=0.12, lw=0)
        axis.axhline(document["target"][task], color="k", lw=0.8, ls=(0, (2, 4)))
        axis.set_title(TITLES[task])
        axis.set_xlabel("simulated days")
        axis.set_ylabel(document["metric"][task].replace("_", " "))
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    seeds = len(document["seeds"])
    figure.suptitle(
        f"Personalised accuracy on each learner's held-out future; mean of {seeds} seeds, "
        "band = min..max; dotted = target"
    )
    figure.tight_layout()
    return figure


def bytes_vs_accuracy(document: Mapping[str, Any]) -> Figure:
    tasks = _tasks(document)
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for method in _methods(document):
            entry = document["per_method"][method].get(task)
            if entry is None:
                continue
            color, _ = STYLE[method]
            megabytes = max(entry["bytes_moved"]["mean"] / 1e6, 1e-3)  # zero on a log axis
            final = entry["final"]
            axis.errorbar(
                megabytes,
                final["mean"],
                yerr=[[final["mean"] - final["min"]], [final["max"] - final["mean"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
            axis.annotate(
                method,
                (megabytes, final["mean"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        axis.set_xscale("log")
        axis.set_title(TITLES[task])
        axis.set_xlabel("MB moved in the whole run (log; 0 drawn at 1 kB)")
        axis.set_ylabel(f"final {document['metric'][task].replace('_', ' ')}")
        axis.grid(alpha=0.3)
    figure.suptitle("Communication against final accuracy (mean, bars = min..max over seeds)")
    figure.tight_layout()
    return figure


def affinity_graph(document: Mapping[str, Any]) -> Figure | None:
    """Homes on a circle by affinity group, joined by the phones that visited spaces in both."""
    world_tasks = [task for task in ("occupancy", "phone_activity") if task in document["tasks"]]
    if not world_tasks:
        return None
    info = document["tasks"][world_tasks[0]]
    groups: dict[str, int] = info["groups"]
    homes = sorted(groups, key=lambda home: (groups[home], home))
    angle = {home: 2 * math.pi * index / len(homes) for index, home in enumerate(homes)}
    where = {home: (math.cos(a), math.sin(a)) for home, a in angle.items()}
    figure, axis = plt.subplots(figsize=(7, 7))
    heaviest = max((count for _, _, count in info["affinity"]), default=1)
    for a, b, count in info["affinity"]:
        (xa, ya), (xb, yb) = where[a], where[b]
        axis.plot(
            [xa, xb],
            [ya, yb],
            color="tab:red",
            alpha=0.25 + 0.6 * count / heaviest,
            lw=0.5 + 3.5 * count / heaviest,
        )
    palette = plt.get_cmap("tab20")
    for home in homes:
        x, y = where[home]
        axis.scatter(
            [x],
            [y],
            s=120,
            color=palette(groups[home] % 20),
            zorder=3,
            edgecolors="black",
            linewidths=0.5,
        )
        if len(homes) <= 40:
            axis.annotate(
                home.removeprefix("home_"), (x, y), fontsize=7, ha="center", va="center", zorder=4
            )
    axis.set_aspect("equal")
    axis.axis("off")
    axis.set_title(
        "Affinity groups: homes (colour = the world's visiting group) joined by phones that\n"
        f"entered spaces in both (line width = phones; {world_tasks[0]}, seed "
        f"{document['seeds'][0]})"
    )
    figure.tight_layout()
    return figure


def scaling(document: Mapping[str, Any]) -> Figure:
    """Wall time against the number of homes, per phase, log-log."""
    rows = document["runs"]
    homes = [row["homes"] for row in rows]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    data = [row["data_seconds"] for row in rows]
    axis.plot(homes, data, "^:", color="tab:brown", label="world, data and contacts")
    for method in document["methods"]:
        axis.plot(
            homes,
            [row["method_seconds"][method] for row in rows],
            "o-",
            color=STYLE[method][0],
            label=method,
        )
    axis.plot(homes, [row["total_seconds"] for row in rows], "s--", color="black", label="total")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("homes")
    axis.set_ylabel("wall seconds")
    axis.set_title(
        f"Simulation cost, {document['days']} days, {document['task']}, "
        f"{document['backend']} backend"
    )
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
