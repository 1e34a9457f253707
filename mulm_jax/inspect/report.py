"""Inspection results as plain data (what `POST /v1/inspect` and `inspect --json` return) and as short summaries
for the terminal."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np

from mulm_jax.inspect.activations import ActivationCache
from mulm_jax.inspect.draw import shown
from mulm_jax.inspect.embedding_space import CLASSES, EmbeddingQuery, EmbeddingSpace, Neighbour
from mulm_jax.inspect.heads import HeadRoles
from mulm_jax.inspect.interventions import AblationTable, Attribution, PatchTable
from mulm_jax.inspect.trace import Trace, Tracer, token_pieces

PARTS = ("tokens", "attention", "lens", "heads")


def _number(x: float, digits: int = 6) -> Optional[float]:
    return None if not math.isfinite(float(x)) else round(float(x), digits)


def _grid(values: np.ndarray, digits: int = 5) -> list:
    """Nested lists of rounded floats (NaN as null), for JSON."""
    rounded = np.round(values.astype(np.float64), digits)
    return np.where(np.isfinite(rounded), rounded, None).tolist()


def token_list(ids: Iterable[int], pieces: Iterable[str]) -> list[dict]:
    """Tokens as JSON: each one's id and its text."""
    return [{"id": int(i), "text": text} for i, text in zip(ids, pieces)]


def trace_json(
    trace: Trace, piece: Callable[[int], str], include: Iterable[str] = PARTS, roles: Optional[HeadRoles] = None
) -> dict:
    """The parts of a trace asked for in `include`, as nested lists; `piece` gives an alternative token's text."""
    include = set(include)
    out: dict = {"num_layers": trace.num_layers, "num_heads": trace.num_heads}
    if "tokens" in include:
        out["tokens"] = [
            {
                "id": int(token),
                "text": text,
                "logprob": _number(trace.logprob_T[t]),
                "top": []
                if t == 0
                else [
                    {"id": int(i), "text": piece(int(i)), "logprob": _number(lp)}
                    for i, lp in zip(trace.top_ids_TxN[t], trace.top_logprobs_TxN[t])
                ],
            }
            for t, (token, text) in enumerate(zip(trace.ids_T, trace.pieces))
        ]
        out["next"] = [
            {"id": int(i), "text": piece(int(i)), "logprob": _number(lp)}
            for i, lp in zip(trace.next_top_ids_N, trace.next_top_logprobs_N)
        ]
    if "attention" in include:
        out["attention"] = _grid(trace.attention_LxHxTxT)
        out["residual_norm"] = _grid(trace.residual_norm_LxT, 4)
        if trace.cross_attention_LxHxTxS is not None:
            out["source_tokens"] = token_list(trace.source_ids_S, trace.source_pieces)
            out["cross_attention"] = _grid(trace.cross_attention_LxHxTxS)
            out["encoder_attention"] = _grid(trace.encoder_attention_LxHxSxS)
    if "lens" in include and trace.lens_top_ids_LxTxN is not None:
        out["lens"] = {
            "top": [
                [
                    [{"id": int(i), "text": piece(int(i)), "prob": _number(p)} for i, p in zip(ids_N, probs_N)]
                    for ids_N, probs_N in zip(ids_TxN, probs_TxN)
                ]
                for ids_TxN, probs_TxN in zip(trace.lens_top_ids_LxTxN, trace.lens_top_probs_LxTxN)
            ],
            "next_rank": np.where(trace.lens_next_rank_LxT >= 0, trace.lens_next_rank_LxT, None).tolist(),
            "next_prob": _grid(trace.lens_next_prob_LxT),
        }
    if "heads" in include and roles is not None:
        out["heads"] = roles.rows()
    return out


def significant(values: np.ndarray, digits: int = 6) -> list | float:
    """Nested lists of floats to `digits` significant digits (NaN and infinities as null), for JSON."""
    flat = [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in np.asarray(values, np.float64).ravel()]
    return np.asarray(flat, object).reshape(np.shape(values)).tolist() if np.ndim(values) else flat[0]


def activations_json(cache: ActivationCache, position: Optional[int] = None) -> dict:
    """A cache as JSON: each name's shape letters, shape and values; with `position`, each name that has the
    decoder's token axis T only at that token (its first T axis taken away: "HxTxT" becomes "HxT")."""
    out = {}
    for name, value in cache.items():
        letters = cache.letters[name].split("x")
        if position is not None and "T" in letters:
            axis = letters.index("T")
            value, letters = np.take(value, position, axis=axis), letters[:axis] + letters[axis + 1 :]
        out[name] = {"letters": "x".join(letters), "shape": list(value.shape), "values": significant(value)}
    return out


def tokens_json(cache: ActivationCache) -> dict:
    """The tokens (and an encoder-decoder model's source tokens) a cache was made from."""
    out = {"tokens": token_list(cache.ids_T, cache.pieces)}
    if cache.source_ids_S is not None:
        out["source_tokens"] = token_list(cache.source_ids_S, cache.source_pieces)
    return out


def _token(tracer: Tracer, token: int) -> dict:
    return {"id": token, "text": tracer.tokenizer.piece(token)}


def ablation_json(table: AblationTable, tracer: Tracer) -> dict:
    return {
        "token": _token(tracer, table.token),
        "position": table.position,
        "mode": table.mode,
        "logprob": _number(table.logprob),
        "delta_logprob": significant(table.delta_LxH),
    }


def patch_json(table: PatchTable, tracer: Tracer) -> dict:
    tokens = lambda ids: token_list(ids, token_pieces(tracer.tokenizer, ids))  # noqa: E731
    return {
        "token": _token(tracer, table.token),
        "clean_tokens": tokens(table.clean_ids_T),
        "corrupt_tokens": tokens(table.corrupt_ids_T),
        "clean_logprob": _number(table.clean_logprob),
        "corrupt_logprob": _number(table.corrupt_logprob),
        "patched_logprob": significant(table.patched_LxT),
        "restored": significant(table.restored_LxT),
    }


def attribution_json(attribution: Attribution, tracer: Tracer) -> dict:
    return {
        "token": _token(tracer, attribution.token),
        "position": attribution.position,
        "logit": _number(attribution.logit),
        "total": _number(attribution.total),
        "components": [
            {"name": label, "logit": _number(value)} for label, value in zip(attribution.labels, attribution.values)
        ],
    }


PROJECTION_LIMIT = 1000  # table points an embeddings answer carries by default (the first ordinary ids)


def _embedding_token(space: EmbeddingSpace, token: int, text: Optional[str] = None) -> dict:
    return {
        "id": int(token),
        "text": space.pieces[token] if text is None else text,
        "class": space.classes[token],
        "flags": space.flags[token],
    }


def _neighbours(space: EmbeddingSpace, found: Optional[list[Neighbour]]) -> Optional[list[dict]]:
    return None if found is None else [{**_embedding_token(space, n.id), "cosine": _number(n.cosine)} for n in found]


def embeddings_json(
    space: EmbeddingSpace, found: EmbeddingQuery, projection: bool = True, limit: int = PROJECTION_LIMIT
) -> dict:
    """An embedding-space query as JSON: the nearest tokens (to `token`, or to the residual at `layer` and
    `position` of the prompt's `tokens`), the analogy's, and with `projection` the PCA of the table (the first
    `limit` ordinary ids, and every id the answer names) and of the prompt's residual stream at each layer."""
    out: dict = {
        "table": space.table,
        "tied": space.tied,
        "vocab_size": space.vocab,
        "ordinary_tokens": len(space.ids_N),
        "classes": list(CLASSES),
        "token": None if found.token is None else _embedding_token(space, found.token),
        "layer": found.layer,
        "position": found.position,
        "nearest": _neighbours(space, found.nearest),
        "analogy": None,
    }
    stream = found.stream
    if stream is not None:
        out["tokens"] = [_embedding_token(space, int(i), text) for i, text in zip(stream.ids_T, stream.pieces)]
    if found.analogy is not None:
        a, b, c = (_embedding_token(space, i) for i in found.analogy)
        out["analogy"] = {"a": a, "b": b, "c": c, "nearest": _neighbours(space, found.analogy_nearest)}
    if projection:
        named = {n.id for n in (found.nearest or []) + (found.analogy_nearest or [])}
        named |= set(found.analogy or []) | ({found.token} if found.token is not None else set())
        named |= set(stream.ids_T.tolist()) if stream is not None else set()
        coords_Nx2, explained_2 = space.projection
        rows = [r for r, i in enumerate(space.ids_N) if r < limit or int(i) in named]
        out["projection"] = {
            "explained_variance_ratio": significant(explained_2),
            "total": len(space.ids_N),
            "points": [
                {**_embedding_token(space, int(space.ids_N[r])), "x": _number(x), "y": _number(y)}
                for r, (x, y) in zip(rows, coords_Nx2[rows].tolist())
            ],
        }
        if stream is not None:
            out["residual"] = [
                {
                    "layer": layer,
                    "explained_variance_ratio": significant(explained_2),
                    "points": [{"position": t, "x": _number(x), "y": _number(y)} for t, (x, y) in enumerate(xy_Tx2)],
                }
                for layer, (xy_Tx2, explained_2) in enumerate(zip(stream.coords_LxTx2.tolist(), stream.explained_Lx2))
            ]
    return out


def embeddings_summary(space: EmbeddingSpace, found: EmbeddingQuery) -> str:
    """The nearest tokens (and the analogy's) as a table, or, without a query, the table's classes counted."""
    which = f"the {space.table} embedding table" + (" (tied: also the output head)" if space.tied else "")
    lines = [f"{len(space.ids_N)} ordinary tokens of {which}"]
    if found.token is not None:
        lines.append(f"nearest to '{shown(space.pieces[found.token])}' (#{found.token}) by cosine:")
    elif found.stream is not None:
        piece = found.stream.pieces[found.position]
        lines.append(
            f"nearest to the residual at layer {found.layer}, position {found.position} ('{shown(piece)}') by cosine:"
        )
    rows = [] if found.nearest is None else [("", found.nearest)]
    if found.analogy is not None:
        a, b, c = (f"'{shown(space.pieces[i])}'" for i in found.analogy)
        rows.append((f"{a} - {b} + {c} (a, b and c left out):", found.analogy_nearest))
    for title, neighbours in rows:
        if title:
            lines.append(title)
        lines += [
            f"  {rank:3d}  {shown(space.pieces[n.id]):>16}  #{n.id:<6d} {space.classes[n.id]:12s} {n.cosine:+.4f}"
            for rank, n in enumerate(neighbours, 1)
        ]
    if not rows:
        counts = {name: sum(space.classes[int(i)] == name for i in space.ids_N) for name in CLASSES}
        lines.append("classes: " + ", ".join(f"{name} {count}" for name, count in counts.items() if count))
    return "\n".join(lines)


def tokens_summary(trace: Trace, piece: Callable[[int], str], most: int = 8) -> str:
    surprisal = -trace.logprob_T
    scored = np.isfinite(surprisal)
    lines = [
        f"{len(trace.pieces)} tokens; mean surprisal {surprisal[scored].mean():.3f} nats "
        f"(perplexity {math.exp(surprisal[scored].mean()):.2f}) over the {int(scored.sum())} predicted"
        if scored.any()
        else f"{len(trace.pieces)} token: nothing to predict"
    ]
    if scored.any():
        lines.append("most surprising (token: surprisal, the model's top guess):")
        for t in np.argsort(-np.where(scored, surprisal, -np.inf))[: min(most, int(scored.sum()))]:
            guess = piece(int(trace.top_ids_TxN[t, 0]))
            lines.append(
                f"  {t:4d} {shown(trace.pieces[t]):>12}: {surprisal[t]:6.2f}  "
                f"(guess '{shown(guess)}', p={math.exp(trace.top_logprobs_TxN[t, 0]):.2f})"
            )
    return "\n".join(lines)


def attention_summary(trace: Trace, layers: Iterable[int], heads: Iterable[int]) -> str:
    """For each chosen head: its entropy and the key each query attends to most, for the last few queries."""
    lines = []
    T = len(trace.pieces)
    for layer in layers:
        for head in heads:
            weights_TxT = trace.attention_LxHxTxT[layer, head]
            strongest = [
                f"{shown(trace.pieces[q])}->{shown(trace.pieces[int(np.argmax(weights_TxT[q]))])}"
                for q in range(max(0, T - 6), T)
            ]
            lines.append(f"layer {layer} head {head}: last queries attend most to  " + "  ".join(strongest))
    return "\n".join(lines)


def lens_summary(trace: Trace, piece: Callable[[int], str]) -> str:
    """What each layer guesses after the last token, and where the actual next tokens first become the top guess."""
    L, T = trace.lens_top_ids_LxTxN.shape[:2]
    lines = [f"after the last token '{shown(trace.pieces[-1])}', each layer's top guesses:"]
    for layer in range(L):
        guesses = ", ".join(
            f"'{shown(piece(int(i)))}' {p:.2f}"
            for i, p in zip(trace.lens_top_ids_LxTxN[layer, T - 1], trace.lens_top_probs_LxTxN[layer, T - 1])
        )
        lines.append(f"  block {layer:2d}: {guesses}")
    if T > 1:
        right = (trace.lens_next_rank_LxT[:, : T - 1] == 0).mean(axis=1)
        lines.append(
            "share of positions where the next token is the top guess, by block: " + " ".join(f"{r:.2f}" for r in right)
        )
    return "\n".join(lines)


def heads_summary(roles: HeadRoles, most: int = 5) -> str:
    lines = []
    for name, values in (("induction", roles.induction_LxH), ("previous-token", roles.previous_token_LxH)):
        order = np.argsort(-values.ravel())[:most]
        H = values.shape[1]
        lines.append(
            f"strongest {name} heads: " + ", ".join(f"{i // H}.{i % H} ({values.ravel()[i]:.2f})" for i in order)
        )
    lines.append(
        f"entropy from {roles.entropy_LxH.min():.2f} to {roles.entropy_LxH.max():.2f} nats; mean distance "
        f"from {roles.mean_distance_LxH.min():.1f} to {roles.mean_distance_LxH.max():.1f} positions"
    )
    return "\n".join(lines)
