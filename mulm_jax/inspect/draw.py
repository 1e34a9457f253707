"""Pictures of what inspection computes (matplotlib, Agg backend): each function takes the numbers and a path,
writes one PNG (to a temporary name, then renamed) and returns the path; nothing here computes a model."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mulm_jax.inspect.heads import HeadRoles  # noqa: E402
from mulm_jax.inspect.trace import Trace  # noqa: E402

MAX_LABELS = 64  # tick labels per axis; longer prompts label every n-th token


def shown(piece: str) -> str:
    """A token's text made visible on an axis: spaces as '␣', newlines as '\\n', tabs as '\\t'."""
    return piece.replace(" ", "\u2423").replace("\n", "\\n").replace("\t", "\\t") or "\u2205"


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (through a temporary file, so a failure leaves nothing half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _token_ticks(ax, pieces: Sequence[str], axis: str) -> None:
    step = max(1, math.ceil(len(pieces) / MAX_LABELS))
    ticks = np.arange(0, len(pieces), step)
    labels = [shown(pieces[i]) for i in ticks]
    size = 8 if len(ticks) <= 32 else 6
    if axis in ("x", "both"):
        ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
    if axis in ("y", "both"):
        ax.set_yticks(ticks, labels, fontsize=size)


def attention_heatmap(
    weights_QxK: np.ndarray, query_pieces: Sequence[str], key_pieces: Sequence[str], title: str, path: str | Path
) -> Path:
    """One head's attention: queries down, keys across, with the tokens as labels and a colour bar."""
    size = min(12.0, 3.0 + 0.18 * max(len(key_pieces), len(query_pieces)))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(
        weights_QxK,
        cmap="viridis",
        vmin=0.0,
        vmax=max(float(weights_QxK.max()), 1e-6),
        interpolation="nearest",
        aspect="auto",
    )
    _token_ticks(ax, key_pieces, "x")
    _token_ticks(ax, query_pieces, "y")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="attention weight")
    return save_figure(fig, path)


def attention_grid(
    attention_LxHxTxT: np.ndarray, title: str, path: str | Path, layers: Optional[Sequence[int]] = None
) -> Path:
    """Every head of the chosen layers as small multiples (rows: layers, columns: heads) on one colour scale."""
    layers = list(range(attention_LxHxTxT.shape[0])) if layers is None else list(layers)
    H = attention_LxHxTxT.shape[1]
    fig, axes = plt.subplots(len(layers), H, figsize=(1.8 * H + 1.0, 1.8 * len(layers) + 0.6), squeeze=False)
    image = None
    for row, layer in enumerate(layers):
        for head in range(H):
            ax = axes[row, head]
            image = ax.imshow(
                attention_LxHxTxT[layer, head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.suptitle(title)
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    return save_figure(fig, path)


def lens_grid(trace: Trace, decode_piece, path: str | Path, title: str, max_positions: int = 48) -> Path:
    """The logit lens: rows are layers (bottom: first), columns positions; each cell names the layer's top next-token
    guess, shaded by its probability, and framed when it is the token that actually comes next."""
    T = len(trace.pieces)
    start = max(0, T - max_positions)
    cols = range(start, T)
    L = trace.lens_top_ids_LxTxN.shape[0]
    probs_LxC = trace.lens_top_probs_LxTxN[:, start:, 0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(cols), 1.2 + 0.42 * L))
    image = ax.imshow(probs_LxC, cmap="Blues", vmin=0.0, vmax=1.0, origin="lower", aspect="auto")
    for c, t in enumerate(cols):
        for layer in range(L):
            guess = shown(decode_piece(int(trace.lens_top_ids_LxTxN[layer, t, 0])))[:6]
            correct = trace.lens_next_rank_LxT[layer, t] == 0
            ax.text(
                c,
                layer,
                guess,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if probs_LxC[layer, c] > 0.6 else "black",
                fontweight="bold" if correct else "normal",
            )
    ax.set_xticks(range(len(cols)), [shown(trace.pieces[t]) for t in cols], rotation=90, fontsize=7)
    ax.set_yticks(range(L), [f"after block {layer}" for layer in range(L)], fontsize=8)
    ax.set_xlabel("input token (each column predicts the token after it; bold: the guess is right)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probability of the top guess")
    return save_figure(fig, path)


def token_surprisal(
    pieces: Sequence[str], surprisal_T: np.ndarray, title: str, path: str | Path, per_line: int = 24
) -> Path:
    """The text as boxes of tokens, each shaded by its surprisal (-log p, in nats) under the model."""
    rows = math.ceil(len(pieces) / per_line)
    fig, ax = plt.subplots(figsize=(per_line * 0.55 + 1.5, 0.45 * rows + 1.0))
    finite = surprisal_T[np.isfinite(surprisal_T)]
    top = float(finite.max()) if finite.size else 1.0
    cmap = plt.get_cmap("Reds")
    for i, piece in enumerate(pieces):
        row, col = divmod(i, per_line)
        value = surprisal_T[i]
        colour = cmap(value / top) if np.isfinite(value) else (0.9, 0.9, 0.9, 1.0)
        ax.add_patch(plt.Rectangle((col, -row - 1), 0.95, 0.9, color=colour))
        ax.text(
            col + 0.47,
            -row - 0.55,
            shown(piece)[:5],
            ha="center",
            va="center",
            fontsize=7,
            color="white" if np.isfinite(value) and value / top > 0.6 else "black",
        )
    ax.set_xlim(0, per_line)
    ax.set_ylim(-rows - 0.1, 0.1)
    ax.axis("off")
    ax.set_title(title)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, top))
    fig.colorbar(mappable, ax=ax, label="surprisal (nats); grey: first token, not predicted", shrink=0.8)
    return save_figure(fig, path)


def head_roles_scatter(roles: HeadRoles, title: str, path: str | Path) -> Path:
    """Each head as a point: mean attention distance against entropy, coloured by its induction score and sized by
    its previous-token score, labelled layer.head."""
    L, H = roles.entropy_LxH.shape
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    points = ax.scatter(
        roles.mean_distance_LxH.ravel(),
        roles.entropy_LxH.ravel(),
        c=roles.induction_LxH.ravel(),
        cmap="plasma",
        vmin=0.0,
        vmax=1.0,
        s=30 + 300 * roles.previous_token_LxH.ravel(),
        edgecolors="black",
        linewidths=0.5,
    )
    for layer in range(L):
        for head in range(H):
            ax.annotate(
                f"{layer}.{head}",
                (roles.mean_distance_LxH[layer, head], roles.entropy_LxH[layer, head]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("mean attention distance (positions back)")
    ax.set_ylabel("attention entropy (nats)")
    ax.set_title(title)
    fig.colorbar(points, ax=ax, label="induction score (size: previous-token score)")
    return save_figure(fig, path)


def loss_by_position(losses: dict[str, np.ndarray], title: str, path: str | Path) -> Path:
    """Mean loss at each position of the context, one line per named curve."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, loss_T in losses.items():
        ax.plot(np.arange(1, len(loss_T) + 1), loss_T, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("position in the context (tokens seen, log scale)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(losses) > 1:
        ax.legend()
    return save_figure(fig, path)


def diverging_grid(
    values_RxC: np.ndarray,
    row_label: str,
    col_labels: Sequence[str] | None,
    colour_label: str,
    title: str,
    path: str | Path,
    col_axis: str,
) -> Path:
    """A table of signed numbers (ablation's change per layer x head, patching's effect per layer x position):
    red below zero, blue above, white at zero, with each cell's value written in when the table is small."""
    R, C = values_RxC.shape
    fig, ax = plt.subplots(figsize=(min(16.0, 2.5 + 0.45 * C), min(10.0, 1.5 + 0.45 * R)))
    bound = max(float(np.nanmax(np.abs(values_RxC))), 1e-6)
    image = ax.imshow(values_RxC, cmap="RdBu", vmin=-bound, vmax=bound, interpolation="nearest", aspect="auto")
    ax.set_yticks(range(R))
    ax.set_ylabel(row_label)
    if col_labels is None:
        ax.set_xticks(range(C))
    else:
        _token_ticks(ax, col_labels, "x")
    ax.set_xlabel(col_axis)
    if C <= 24 and R <= 24:
        for r in range(R):
            for c in range(C):
                dark = abs(values_RxC[r, c]) > 0.6 * bound
                ax.text(
                    c,
                    r,
                    f"{values_RxC[r, c]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colour_label)
    return save_figure(fig, path)


def attribution_bars(labels: Sequence[str], values: np.ndarray, title: str, path: str | Path, most: int = 24) -> Path:
    """Direct logit attribution: the components with the largest contributions (either sign), largest at the top."""
    order = np.argsort(-np.abs(values))[:most][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.28 * len(order)))
    ax.barh(range(len(order)), values[order], color=["#c0392b" if v < 0 else "#2e6fb5" for v in values[order]])
    ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("contribution to the logit")
    ax.set_title(title)
    return save_figure(fig, path)


# The colour of each token class of inspect.embedding_space (the lab's embeddings.js uses the same).
CLASS_COLOURS = {
    "byte": "#9e9e9e",
    "whitespace": "#17becf",
    "word start": "#1f77b4",
    "upper": "#d62728",
    "lower": "#ff7f0e",
    "digit": "#2ca02c",
    "punctuation": "#9467bd",
    "other": "#8c564b",
}
ALL_LABELS = 160  # a scatter of at most this many points labels each one; a larger one only those marked


def _class_legend(ax, classes: Sequence[str]) -> None:
    present = [c for c in CLASS_COLOURS if c in set(classes)]
    handles = [plt.Line2D([], [], marker="o", ls="", color=CLASS_COLOURS[c], label=c) for c in present]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.8)


def embedding_scatter(
    coords_Nx2: np.ndarray,
    pieces: Sequence[str],
    classes: Sequence[str],
    explained_2: np.ndarray,
    title: str,
    path: str | Path,
    marked: Sequence[int] = (),
) -> Path:
    """The embedding table's PCA: a point per token coloured by its class; the `marked` rows (a query and its
    nearest tokens) drawn larger and outlined. Every point is labelled with its text when there are few."""
    fig, ax = plt.subplots(figsize=(9.0, 7.5))
    marked = list(marked)
    colours = [CLASS_COLOURS[c] for c in classes]
    small = len(pieces) <= ALL_LABELS
    ax.scatter(coords_Nx2[:, 0], coords_Nx2[:, 1], c=colours, s=40 if small else 6, alpha=0.35 if small else 0.5)
    if marked:
        ax.scatter(
            coords_Nx2[marked, 0],
            coords_Nx2[marked, 1],
            c=[colours[i] for i in marked],
            s=90,
            edgecolors="black",
            linewidths=1.2,
        )
    for i in range(len(pieces)) if small else marked:
        ax.annotate(
            shown(pieces[i]),
            coords_Nx2[i],
            fontsize=9 if i in marked else 8,
            fontweight="bold" if i in marked else "normal",
            ha="center",
            va="center",
            xytext=(0, 7),
            textcoords="offset points",
        )
    ax.set_xlabel(f"principal component 1 ({100 * explained_2[0]:.1f}% of the variance)")
    ax.set_ylabel(f"principal component 2 ({100 * explained_2[1]:.1f}%)")
    ax.grid(alpha=0.3)
    _class_legend(ax, classes)
    ax.set_title(title)
    return save_figure(fig, path)


def residual_panels(
    coords_LxTx2: np.ndarray,
    pieces: Sequence[str],
    classes: Sequence[str],
    explained_Lx2: np.ndarray,
    title: str,
    path: str | Path,
) -> Path:
    """A prompt's residual stream, one panel per layer (its own PCA over the positions): each position a point
    coloured by its token's class and labelled with it, joined in order by a grey line (the first one ringed)."""
    L = coords_LxTx2.shape[0]
    cols = min(L, 3)
    rows = math.ceil(L / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    colours = [CLASS_COLOURS[c] for c in classes]
    for layer in range(rows * cols):
        ax = axes.flat[layer]
        if layer >= L:
            ax.axis("off")
            continue
        xy_Tx2 = coords_LxTx2[layer]
        ax.plot(xy_Tx2[:, 0], xy_Tx2[:, 1], color="#bbbbbb", lw=0.8, zorder=1)
        ax.scatter(xy_Tx2[:, 0], xy_Tx2[:, 1], c=colours, s=28, zorder=2)
        ax.scatter(xy_Tx2[:1, 0], xy_Tx2[:1, 1], s=90, facecolors="none", edgecolors="black", zorder=3)
        for t, piece in enumerate(pieces):
            ax.annotate(shown(piece), xy_Tx2[t], fontsize=7, xytext=(3, 3), textcoords="offset points")
        where = "the embeddings" if layer == 0 else f"after block {layer - 1}"
        ax.set_title(
            f"layer {layer}: {where} ({100 * explained_Lx2[layer, 0]:.0f}% + {100 * explained_Lx2[layer, 1]:.0f}%)",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    _class_legend(axes.flat[0], classes)
    fig.suptitle(title)
    return save_figure(fig, path)


def run_comparison(result: dict, title: str, path: str | Path) -> Path:
    """One prompt through runs side by side (inspect.compare.compare_runs), one column per run: the chosen head's
    attention over the prompt, the top next tokens, and every head's previous-token and induction scores."""
    runs = result["runs"]
    fig, axes = plt.subplots(3, len(runs), figsize=(4.6 * len(runs), 12), height_ratios=[4.2, 1.8, 2.4], squeeze=False)
    for c, run in enumerate(runs):
        attention, bars, roles = axes[:, c]
        if run["attention"] is None:
            attention.axis("off")
            attention.text(
                0.5, 0.5, f"no layer {run['layer']}, head {run['head']}", ha="center", transform=attention.transAxes
            )
        else:
            attention.imshow(np.asarray(run["attention"]), cmap="Blues", vmin=0.0, vmax=1.0)
            _token_ticks(attention, run["tokens"], "both")
        attention.set_title(
            f"{run['run']} (step {run['step']})\nattention, layer {run['layer']}, head {run['head']}", fontsize=10
        )
        texts = [f"'{shown(t['text'])}'" for t in run["next"]]
        bars.barh(range(len(texts)), [t["prob"] for t in run["next"]], color=f"C{c}")
        bars.set_yticks(range(len(texts)), texts, fontsize=8)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.set_xlabel("probability of the next token")
        labels = [f"{h['layer']}.{h['head']}" for h in run["heads"]]
        x = np.arange(len(labels))
        roles.bar(x - 0.2, [h["previous_token"] for h in run["heads"]], 0.4, label="previous-token")
        roles.bar(x + 0.2, [h["induction"] for h in run["heads"]], 0.4, label="induction")
        roles.set_xticks(x, labels, rotation=90 if len(labels) > 16 else 0, fontsize=7)
        roles.set_ylim(0, 1)
        roles.set_xlabel("layer.head")
        roles.set_ylabel("score")
        roles.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
