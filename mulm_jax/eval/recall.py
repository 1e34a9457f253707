"""Associative recall: sequences of a given length made of the `recall` source's documents (key-value pairs, then
every key asked for again), packed with an end-of-document token between them as training windows are; accuracy of
the greedy answers by length, by the query's distance to its pair and by the pair's depth in the context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mulm_jax.data import recall
from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.eval.perplexity import Scorer
from mulm_jax.eval.scoring import EvalError, batched

DEPTH_EDGES = tuple(round(0.1 * i, 1) for i in range(11))  # depth buckets [0, 0.1), ..., [0.9, 1.0]
MIN_LENGTH = 6 * recall.MAX_PAIRS  # a document of the most pairs and the start of the next
LONGEST_DISTANCE = 6 * recall.MAX_PAIRS - 3  # the last pair's key to its query's, when asked last


@dataclass(frozen=True)
class RecallSequence:
    """Token ids [length + 1] (the model reads the first `length`) and, per query answered within them, its key's
    position and its pair's key's position."""

    ids: np.ndarray
    query_positions: np.ndarray
    pair_positions: np.ndarray


def recall_sequence(rng: np.random.Generator, length: int, ids: dict[str, int], end: int) -> RecallSequence:
    """Documents drawn as the source draws them (recall.document_layouts), each followed by `end`, cut to
    length + 1 tokens; the queries whose answer lies within them."""
    tokens: list[int] = []
    queries, pairs = [], []
    for doc in recall.document_layouts(length + 1, rng):
        start = len(tokens)
        tokens += [ids[c] for c in doc.text] + [end]
        queries.append(start + doc.query_positions)
        pairs.append(start + doc.pair_positions[doc.query_pairs])
    query_positions, pair_positions = np.concatenate(queries), np.concatenate(pairs)
    inside = query_positions + 1 <= length  # the answer is a target of the `length` tokens read
    return RecallSequence(np.asarray(tokens[: length + 1], np.int32), query_positions[inside], pair_positions[inside])


def check_length(length: int) -> None:
    if length < MIN_LENGTH:
        raise EvalError(
            f"recall length {length} is too short: expected at least {MIN_LENGTH} (a document of "
            f"{recall.MAX_PAIRS} pairs, each asked for, and the start of the next)"
        )


def distance_edges(longest: int) -> list[int]:
    """Distance bucket edges, powers of two: [1, 8), [8, 16), [16, 32), ... up past `longest`."""
    edges = [1, 8]
    while edges[-1] <= longest:
        edges.append(2 * edges[-1])
    return edges


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """'8-15' for whole-number edges, '0.1-0.2' for fractions."""
    if all(float(e).is_integer() for e in edges):
        return [f"{int(a)}-{int(b) - 1}" for a, b in zip(edges, edges[1:])]
    return [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])]


def bucket_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Per value, its bucket [edges[i], edges[i + 1]) (the last includes its top edge); -1 outside them all."""
    values = np.asarray(values)
    index = np.minimum(np.searchsorted(edges, values, side="right") - 1, len(edges) - 2)
    return np.where((values >= edges[0]) & (values <= edges[-1]), index, -1)


def bucket_means(hits: np.ndarray, index: np.ndarray, buckets: int) -> list[Optional[float]]:
    """Mean of `hits` in each of `buckets` buckets (`index`: each hit's); None for an empty bucket."""
    return [float(hits[index == b].mean()) if np.any(index == b) else None for b in range(buckets)]


def recall_accuracy(
    score: Scorer, tokenizer: Tokenizer, lengths: Sequence[int], trials: int, *, seed: int = 0, batch: int = 4
) -> dict:
    """Greedy accuracy of the answers in `trials` random recall sequences of each length (recall_sequence: the
    source's documents packed, as a training window reads them; keys repeat only further apart than
    recall.RECENT_CHARS, so past a 64-token context an older pair of the same key may precede a query, which must be
    answered from its own document's): overall, by distance bucket and by depth bucket per length, and by
    depth x distance.

    {"lengths", "trials", "queries": [per length], "by_length": [...], "distance_edges", "depth_edges",
    "by_distance": [[per bucket] per length], "by_depth": [...], "by_depth_distance": [[[per distance] per depth]
    per length]}; an empty bucket is None."""
    ids = recall.token_ids(tokenizer)
    if trials < 1:
        raise EvalError(f"trials={trials}: expected at least 1")
    for length in lengths:
        check_length(length)
    end = tokenizer.eos_id if tokenizer.eos_id is not None else ids[" "]
    rng = np.random.default_rng(seed)
    edges = distance_edges(LONGEST_DISTANCE)  # the same buckets whatever the lengths, so results line up
    out: dict = {
        "lengths": list(lengths),
        "trials": trials,
        "queries": [],
        "by_length": [],
        "distance_edges": edges,
        "depth_edges": list(DEPTH_EDGES),
        "by_distance": [],
        "by_depth": [],
        "by_depth_distance": [],
    }
    for length in lengths:
        sequences = [recall_sequence(rng, length, ids, end) for _ in range(trials)]
        ids_NxT1 = np.stack([seq.ids for seq in sequences])
        hits = []
        for rows, real in batched(np.arange(trials), batch):
            _, greedy_BxT = score(ids_NxT1[rows, :-1], ids_NxT1[rows, 1:])
            for row, greedy_T in zip(rows[:real], greedy_BxT[:real]):
                answered_at = sequences[row].query_positions  # the answer follows each query's key
                hits.append(greedy_T[answered_at] == ids_NxT1[row, answered_at + 1])
        hits = np.concatenate(hits)
        distance = bucket_index(np.concatenate([s.query_positions - s.pair_positions for s in sequences]), edges)
        depth = bucket_index(np.concatenate([s.pair_positions / length for s in sequences]), DEPTH_EDGES)
        out["queries"].append(int(hits.size))
        out["by_length"].append(float(hits.mean()))
        out["by_distance"].append(bucket_means(hits, distance, len(edges) - 1))
        out["by_depth"].append(bucket_means(hits, depth, len(DEPTH_EDGES) - 1))
        out["by_depth_distance"].append(
            [bucket_means(hits[depth == d], distance[depth == d], len(edges) - 1) for d in range(len(DEPTH_EDGES) - 1)]
        )
    return out


def recall_tables(result: dict) -> str:
    """The accuracy of `recall_accuracy`'s result as text tables: by length, then by distance and by depth (one row
    per length; buckets no length has are left out; '-' where a length has none)."""

    def rows(key: str, edges: Sequence[float], title: str) -> list[str]:
        labels = bucket_labels(edges)
        shown = [b for b in range(len(labels)) if any(row[b] is not None for row in result[key])]
        width = max(8, *(len(labels[b]) + 2 for b in shown))
        lines = [f"{title}\nlength  " + "".join(f"{labels[b]:<{width}}" for b in shown)]
        for length, row in zip(result["lengths"], result[key]):
            cells = ("-" if row[b] is None else f"{row[b]:.2f}" for b in shown)
            lines.append(f"{length:<8}" + "".join(f"{c:<{width}}" for c in cells))
        return lines

    lines = ["length  accuracy  queries"]
    lines += [f"{n:<8}{a:<10.2f}{q}" for n, a, q in zip(result["lengths"], result["by_length"], result["queries"])]
    lines += rows("by_distance", result["distance_edges"], "by distance (query position - pair position, tokens)")
    lines += rows("by_depth", result["depth_edges"], "by depth (pair position / length)")
    return "\n".join(lines)


def accuracy_heatmaps(
    panels: Sequence[tuple[str, Sequence[Sequence[Optional[float]]], Sequence[str], Sequence[str]]],
    ylabel: str,
    xlabel: str,
    title: str,
    path: str | Path,
) -> Path:
    """Heatmaps of accuracies in [0, 1] side by side, one per (panel title, rows x columns of accuracy or None,
    row labels, column labels); empty cells blank, every cell written."""
    from mulm_jax.inspect.draw import plt, save_figure  # matplotlib only for a figure

    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(
            0.2 + 0.62 * sum(len(p[3]) for p in panels) + 1.3 * len(panels),
            1.4 + 0.36 * max(len(p[2]) for p in panels),
        ),
        squeeze=False,
    )
    for ax, (name, cells, rows, columns) in zip(axes[0], panels):
        grid = np.array([[np.nan if c is None else c for c in row] for row in cells], float)
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (r, c), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(
                    c,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.5 else "white",
                )
        ax.set_xticks(range(len(columns)), columns, rotation=45, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, pad=0.02, label="accuracy")
    fig.suptitle(title, fontsize=10, y=1.05)  # above the panel titles
    return save_figure(fig, path)


def recall_heatmap(result: dict, title: str, path: str | Path) -> Path:
    """`recall_accuracy`'s accuracy by depth x distance, one panel per length (the buckets some length has)."""
    distances, depths = bucket_labels(result["distance_edges"]), bucket_labels(result["depth_edges"])
    cells = result["by_depth_distance"]
    cols = [b for b in range(len(distances)) if any(row[b] is not None for grid in cells for row in grid)]
    rows = [d for d in range(len(depths)) if any(v is not None for grid in cells for v in grid[d])]
    panels = [
        (
            f"length {n}",
            [[grid[d][b] for b in cols] for d in rows],
            [depths[d] for d in rows],
            [distances[b] for b in cols],
        )
        for n, grid in zip(result["lengths"], cells)
    ]
    return accuracy_heatmaps(panels, "depth (pair position / length)", "distance (tokens)", title, path)
