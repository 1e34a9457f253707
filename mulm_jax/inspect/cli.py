"""`python -m mulm_jax inspect VIEW` (pictures and summaries of one traced prompt, or of a run's validation loss by
position) and `python -m mulm_jax plot RUN ...` (training curves of runs side by side)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mulm_jax import startup
from mulm_jax.errors import MulmError

VIEWS = {
    "attention": "attention heatmaps: one per head of --layer (default: the last), or just --head; and a grid "
    "of every head of every layer (an encoder-decoder's: also its cross-attention over the source)",
    "lens": "the logit lens: each layer's residual put through the final norm and output head, its top guess "
    "for the next token at each position",
    "tokens": "each token of the text shaded by its surprisal (-log p under the model), with the most "
    "surprising listed",
    "heads": "head roles: entropy, mean attention distance, previous-token and induction scores of every head",
    "positions": "mean validation loss at each position of the context (how prediction improves with context)",
    "activations": "named activations of one forward pass (--names, globs allowed; --position: one token's); "
    "every name with its shape letters without --names",
    "ablate": "each attention head ablated in turn (--mode zero or mean): the change in the log-probability of "
    "the next token (--token, default the prediction) after --position, as a layer x head table",
    "patch": "activation patching: each layer's residual input at each position taken from --clean's run into "
    "--corrupt's, and how much of the clean prediction it restores",
    "attribute": "direct logit attribution: each head's and MLP's share of the logit of --token (default the "
    "prediction) at --position, through the final norm",
    "embeddings": "the embedding space: the tokens nearest (cosine) to --token, or to the residual stream at --layer "
    "(0 = the embeddings .. L = the last block's output) and --position of --prompt, and to --analogy a,b,c (a - b + "
    "c); a PCA of the embedding table coloured by token class, and of the prompt's residual stream at each layer",
    "compare": "two to four runs side by side (inspect compare RUN_DIR RUN_DIR ... --prompt P): the settings that "
    "differ, each run's loss on the prompt and next tokens, one head's attention (--layer, default each run's last; "
    "--head, default 0) and every head's previous-token and induction scores",
}
INTERVENTIONS = ("ablate", "patch", "attribute")


def register(subparsers: Any) -> None:
    views = "\n".join(f"  {name:10s} {about}" for name, about in VIEWS.items())
    parser = subparsers.add_parser(
        "inspect",
        help="look inside a trained run: attention, logit lens, token surprisal, head roles, loss by position",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Trace a prompt through a trained run and draw what happens inside.\n\nviews:\n{views}",
    )
    parser.add_argument("view", choices=list(VIEWS), metavar="VIEW", help=", ".join(VIEWS))
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="compare: the run folders (2 to 4)")
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="a train.py --workdir (every view but compare)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--prompt", help="the text to trace")
    text.add_argument("--text-file", type=Path, help="trace this file's text (up to the model's context)")
    parser.add_argument(
        "--target",
        help="encoder-decoder runs: the decoder's text, the prompt being the source "
        "(default for a run trained on pairs: its greedy output for the source)",
    )
    parser.add_argument(
        "--layer", type=int, help="layer to draw (attention); embeddings: the residual's layer, 0 to L (default L)"
    )
    parser.add_argument("--head", type=int, help="head to draw (attention; needs --layer or takes the last)")
    parser.add_argument(
        "--top-k", type=int, default=5, help="alternatives kept per position; embeddings: nearest tokens (default 5)"
    )
    parser.add_argument("--names", help="activations: comma-separated names or globs (default: list every name)")
    parser.add_argument(
        "--position",
        type=int,
        help="activations: only this token (negative: from the end); ablate, attribute: the "
        "position predicting --token; embeddings: the residual's position (default: the last)",
    )
    parser.add_argument(
        "--token",
        help="ablate, patch, attribute: the token followed, as its text (one token) or "
        "#ID (default: the model's prediction); embeddings: the token whose nearest tokens are listed",
    )
    parser.add_argument("--analogy", help="embeddings: three tokens A,B,C (texts or #ID): the nearest to A - B + C")
    parser.add_argument(
        "--table",
        choices=["input", "output"],
        default="input",
        help="embeddings: the token embedding or the output head (the same table when tied; default input)",
    )
    parser.add_argument(
        "--mode",
        choices=["zero", "mean"],
        default="zero",
        help="ablate: set each head's output to zero or to its mean over the prompt (default zero)",
    )
    parser.add_argument("--clean", help="patch: the prompt whose activations are patched in")
    parser.add_argument("--corrupt", help="patch: the prompt they are patched into (the same number of tokens)")
    parser.add_argument(
        "--windows",
        type=int,
        default=256,
        help="positions: validation windows of the model's context to average over (default 256)",
    )
    parser.add_argument("--out", type=Path, help="folder for the PNG pictures (default: RUN_DIR/inspect)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a summary")
    startup.add_startup_arguments(parser)
    parser.set_defaults(func=run_inspect)

    plot = subparsers.add_parser(
        "plot",
        help="training and validation loss curves of runs side by side (and "
        "validation bits per byte, comparable across tokenizers), with a "
        "table of their parameters, speed and best validation loss",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py --workdir folders")
    plot.add_argument("--out", type=Path, default=Path("runs.png"), help="the picture (default runs.png)")
    plot.add_argument("--json", action="store_true", help="print the table as JSON")
    plot.set_defaults(func=run_plot)


def _prompt(args: argparse.Namespace) -> str:
    if args.text_file is not None:
        try:
            return args.text_file.read_text(encoding="utf-8")
        except OSError as e:
            raise MulmError(f"--text-file {str(args.text_file)!r} cannot be read: {e.strerror}") from None
    if args.prompt is None:
        raise MulmError(f"inspect {args.view} needs --prompt TEXT or --text-file F")
    return args.prompt


def _target(args: argparse.Namespace, loaded: Any, prompt: str) -> str | None:
    """--target; for an encoder-decoder trained on pairs without it, the greedy output for the prompt (its source)."""
    if args.target is not None or loaded.decoder_start is None:
        return args.target
    from mulm_jax.infer import Engine
    from mulm_jax.inspect.trace import greedy_target

    with Engine(loaded, slots=1) as engine:
        return greedy_target(engine, prompt)


def _layers_heads(args: argparse.Namespace, L: int, H: int) -> tuple[list[int], list[int]]:
    """The layers and heads the flags choose, checked against the model before anything is computed."""
    if args.layer is not None and not 0 <= args.layer < L:
        raise MulmError(f"--layer {args.layer} is out of range: this model has layers 0 to {L - 1}")
    if args.head is not None and not 0 <= args.head < H:
        raise MulmError(f"--head {args.head} is out of range: this model has heads 0 to {H - 1}")
    layer = L - 1 if args.layer is None else args.layer
    return [layer], list(range(H)) if args.head is None else [args.head]


def run_inspect(args: argparse.Namespace) -> int:
    from mulm_jax.inspect import draw, report
    from mulm_jax.inspect.heads import head_roles
    from mulm_jax.inspect.trace import Tracer
    from mulm_jax.infer import load_model

    if args.view == "compare":
        return _compare(args)
    if args.checkpoint is None or args.runs:
        raise MulmError(
            f"inspect {args.view} takes one run as --checkpoint RUN_DIR"
            + (f", not {' '.join(args.runs)} (run folders without a flag are for inspect compare)" if args.runs else "")
        )
    startup.start(args)
    loaded = load_model(args.checkpoint, args.step)
    cfg = loaded.config.model
    out_dir = args.out or Path(args.checkpoint) / "inspect"
    name = f"{Path(args.checkpoint).name} step {loaded.step}"
    if args.view == "embeddings":  # its --layer counts the embeddings as layer 0
        return _embeddings(args, Tracer(loaded), out_dir, name)
    layers, heads = _layers_heads(args, cfg.decoder_layers, cfg.num_heads)
    piece = loaded.tokenizer.piece
    if args.view == "positions":
        return _positions(args, loaded, out_dir, name)
    tracer = Tracer(loaded)
    if args.view == "activations":
        return _activations(args, tracer)
    if args.view in INTERVENTIONS:
        return _intervention(args, tracer, out_dir, name)
    prompt = _prompt(args)
    trace = tracer.trace(prompt, top_k=args.top_k, lens=args.view == "lens", target=_target(args, loaded, prompt))
    roles = head_roles(tracer, trace.attention_LxHxTxT) if args.view == "heads" else None
    if args.json:
        part = {"attention": "attention", "lens": "lens", "tokens": "tokens", "heads": "heads"}[args.view]
        print(json.dumps(report.trace_json(trace, piece, ("tokens", part), roles)))
    written = []
    if args.view == "attention":
        for layer in layers:
            for head in heads:
                written.append(
                    draw.attention_heatmap(
                        trace.attention_LxHxTxT[layer, head],
                        trace.pieces,
                        trace.pieces,
                        f"{name}: attention, layer {layer}, head {head}",
                        out_dir / f"attention_L{layer}_H{head}.png",
                    )
                )
        written.append(
            draw.attention_grid(
                trace.attention_LxHxTxT, f"{name}: attention of every head", out_dir / "attention_grid.png"
            )
        )
        if trace.cross_attention_LxHxTxS is not None:  # queries: the decoder's tokens; keys: the source's
            predicted = [*trace.top_ids_TxN[1:, 0].tolist(), int(trace.next_top_ids_N[0])]
            rows = [f"{draw.shown(p)}\u2192{draw.shown(piece(i))}" for p, i in zip(trace.pieces, predicted)]
            for layer in layers:
                for head in heads:
                    written.append(
                        draw.attention_heatmap(  # each row: a decoder input -> the token it predicts
                            trace.cross_attention_LxHxTxS[layer, head],
                            rows,
                            trace.source_pieces,
                            f"{name}: cross-attention over the source, layer {layer}, head {head}",
                            out_dir / f"cross_attention_L{layer}_H{head}.png",
                        )
                    )
            written.append(
                draw.attention_grid(
                    trace.cross_attention_LxHxTxS,
                    f"{name}: cross-attention of every head over the source",
                    out_dir / "cross_attention_grid.png",
                )
            )
        summary = report.attention_summary(trace, layers, heads)
    elif args.view == "lens":
        written.append(draw.lens_grid(trace, piece, out_dir / "lens.png", f"{name}: logit lens"))
        summary = report.lens_summary(trace, piece)
    elif args.view == "tokens":
        written.append(
            draw.token_surprisal(
                trace.pieces, -trace.logprob_T, f"{name}: surprisal of each token", out_dir / "tokens.png"
            )
        )
        summary = report.tokens_summary(trace, piece)
    else:
        written.append(draw.head_roles_scatter(roles, f"{name}: head roles", out_dir / "heads.png"))
        summary = report.heads_summary(roles)
    if not args.json:
        print(summary)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def _activations(args: argparse.Namespace, tracer: Any) -> int:
    from mulm_jax.inspect.interventions import check_position
    from mulm_jax.inspect.report import activations_json, tokens_json

    if args.names is None and not args.json:
        for activation, letters in tracer.names.items():
            print(f"{activation:36s} {letters}")
        return 0
    names = None if args.names is None else [n.strip() for n in args.names.split(",") if n.strip()]
    cache = tracer.run_with_cache(_prompt(args), names)
    position = None if args.position is None else check_position(args.position, len(cache.ids_T))
    values = activations_json(cache, position)
    if args.json:
        print(json.dumps({**tokens_json(cache), "position": position, "activations": values}))
        return 0
    for activation, value in values.items():
        array = np.asarray(value["values"], np.float64)
        print(
            f"{activation:36s} {value['letters']:10s} {str(tuple(value['shape'])):16s} norm {np.linalg.norm(array):9.4f}"
            f"  first {np.round(array.ravel()[:4], 4).tolist()}"
        )
    return 0


def _token_arg(token: str | None) -> str | int | None:
    """--token as the text of one token, or #ID as an id."""
    if token is not None and token.startswith("#") and token[1:].isdigit():
        return int(token[1:])
    return token


def _intervention(args: argparse.Namespace, tracer: Any, out_dir: Path, name: str) -> int:
    from mulm_jax.inspect import draw, interventions
    from mulm_jax.inspect.report import ablation_json, attribution_json, patch_json

    token, position = _token_arg(args.token), -1 if args.position is None else args.position
    piece = tracer.tokenizer.piece
    if args.view == "ablate":
        table = interventions.ablate_each_head(tracer, _prompt(args), token=token, position=position, mode=args.mode)
        data = ablation_json(table, tracer)
        L, H = table.delta_LxH.shape
        worst = np.argsort(table.delta_LxH.ravel())[:5]
        summary = (
            f"log p('{draw.shown(piece(table.token))}' after position {table.position}) = {table.logprob:.3f}; "
            f"{table.mode}-ablating one head changes it by {table.delta_LxH.min():+.3f} to "
            f"{table.delta_LxH.max():+.3f}\nmost harmful heads (layer.head): "
            + ", ".join(f"{i // H}.{i % H} ({table.delta_LxH.ravel()[i]:+.3f})" for i in worst)
        )
        path = draw.diverging_grid(
            table.delta_LxH,
            "layer",
            None,
            "change in log-probability",
            f"{name}: {table.mode}-ablating each head, log p('{draw.shown(piece(table.token))}')",
            out_dir / "ablate.png",
            "head",
        )
    elif args.view == "patch":
        if args.clean is None or args.corrupt is None:
            raise MulmError("inspect patch needs --clean TEXT and --corrupt TEXT (the same number of tokens)")
        table = interventions.patch_residual(tracer, args.clean, args.corrupt, token=token)
        data = patch_json(table, tracer)
        restored = table.restored_LxT
        layer, t = np.unravel_index(int(np.argmax(restored)), restored.shape)
        summary = (
            f"log p('{draw.shown(piece(table.token))}'): clean {table.clean_logprob:.3f}, corrupt "
            f"{table.corrupt_logprob:.3f}; patching one place restores up to {restored.max():.2f} of the gap "
            f"(layer {layer}, position {t})"
        )
        path = draw.diverging_grid(
            restored,
            "layer (its residual input)",
            [token["text"] for token in data["corrupt_tokens"]],
            "share of the clean log-probability restored",
            f"{name}: patching the residual stream, clean -> corrupt",
            out_dir / "patch.png",
            "position (corrupt prompt's token)",
        )
    else:
        attribution = interventions.logit_attribution(tracer, _prompt(args), token=token, position=position)
        data = attribution_json(attribution, tracer)
        top = np.argsort(-np.abs(attribution.values))[:6]
        summary = (
            f"logit of '{draw.shown(piece(attribution.token))}' at position {attribution.position}: "
            f"{attribution.logit:.4f} (sum of the components {attribution.total:.4f})\nlargest: "
            + ", ".join(f"{attribution.labels[i]} {attribution.values[i]:+.3f}" for i in top)
        )
        path = draw.attribution_bars(
            attribution.labels,
            attribution.values,
            f"{name}: direct logit attribution of '{draw.shown(piece(attribution.token))}'",
            out_dir / "attribute.png",
        )
    print(json.dumps(data) if args.json else summary)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _embeddings(args: argparse.Namespace, tracer: Any, out_dir: Path, name: str) -> int:
    from mulm_jax.inspect import draw
    from mulm_jax.inspect.embedding_space import EmbeddingSpace, query
    from mulm_jax.inspect.report import embeddings_json, embeddings_summary

    space = EmbeddingSpace(tracer.loaded, args.table)
    analogy = None if args.analogy is None else [_token_arg(t) for t in args.analogy.split(",")]
    found = query(
        space,
        tracer,
        token=_token_arg(args.token),
        prompt=None if args.prompt is None and args.text_file is None else _prompt(args),
        layer=args.layer,
        position=-1 if args.position is None else args.position,
        analogy=analogy,
        top_k=args.top_k,
    )
    print(json.dumps(embeddings_json(space, found)) if args.json else embeddings_summary(space, found))
    rows = {int(i): r for r, i in enumerate(space.ids_N)}
    named = [n.id for n in (found.nearest or [])] + ([found.token] if found.token is not None else [])
    coords_Nx2, explained_2 = space.projection
    written = [
        draw.embedding_scatter(
            coords_Nx2,
            [space.pieces[i] for i in space.ids_N],
            [space.classes[i] for i in space.ids_N],
            explained_2,
            f"{name}: the {args.table} embedding table (PCA), coloured by token class",
            out_dir / "embeddings.png",
            [rows[i] for i in named if i in rows],
        )
    ]
    if found.stream is not None:
        written.append(
            draw.residual_panels(
                found.stream.coords_LxTx2,
                found.stream.pieces,
                [space.classes[int(i)] for i in found.stream.ids_T],
                found.stream.explained_Lx2,
                f"{name}: the residual stream of the prompt at each layer (PCA per layer; ringed: the first token)",
                out_dir / "embeddings_residual.png",
            )
        )
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def _positions(args: argparse.Namespace, loaded: Any, out_dir: Path, name: str) -> int:
    from mulm_jax.inspect import draw
    from mulm_jax.inspect.positions import validation_loss_by_position

    loss_T = validation_loss_by_position(loaded, args.windows)
    if args.json:
        print(json.dumps({"context": len(loss_T), "loss_by_position": [round(float(x), 5) for x in loss_T]}))
    else:
        marks = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if p <= len(loss_T)]
        print("mean validation loss at position: " + "  ".join(f"{p}: {loss_T[p - 1]:.3f}" for p in marks))
    path = draw.loss_by_position({name: loss_T}, f"{name}: validation loss by position", out_dir / "positions.png")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from mulm_jax.inspect import draw
    from mulm_jax.inspect.compare import MAX_COMPARED, compare_runs, summary
    from mulm_jax.infer import load_model

    if not 2 <= len(args.runs) <= MAX_COMPARED or args.checkpoint is not None:
        raise MulmError(
            f"inspect compare takes 2 to {MAX_COMPARED} run folders (inspect compare RUN_DIR RUN_DIR ...), "
            f"not {len(args.runs)}" + (" and --checkpoint" if args.checkpoint is not None else "")
        )
    if args.step is not None:
        raise MulmError("inspect compare reads each run's newest checkpoint: --step is for one run")
    prompt = _prompt(args)
    startup.start(args)
    runs = [(Path(run).name, load_model(run)) for run in args.runs]
    result = compare_runs(runs, prompt, args.layer, args.head or 0, args.top_k)
    print(json.dumps(result) if args.json else summary(result))
    out = args.out or Path("inspect-compare")
    path = draw.run_comparison(result, f"'{prompt[:60]}' through {len(runs)} runs", out / "compare.png")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from mulm_jax.inspect.runs import plot_runs, read_run, runs_table

    runs = [read_run(Path(run)) for run in args.runs]
    table = runs_table(runs)
    if args.json:
        print(json.dumps(table))
    else:
        print(
            f"{'run':24s} {'params':>10s} {'steps':>7s} {'tokens/s':>10s} {'best val loss':>14s} {'best val bpb':>12s}"
        )
        for row in table:
            best = "-" if row["best_val_loss"] is None else f"{row['best_val_loss']:.4f} @{row['best_val_step']}"
            speed = "-" if row["tokens_per_sec"] is None else f"{row['tokens_per_sec']:,.0f}"
            bpb = "-" if row["best_val_bpb"] is None else f"{row['best_val_bpb']:.4f}"
            print(f"{row['run'][:24]:24s} {row['params']:>10,d} {row['steps']:>7d} {speed:>10s} {best:>14s} {bpb:>12s}")
    path = plot_runs(runs, table, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return 0
