"""Look inside a trained run: one traced forward pass (tokens, attention, residual stream, logit lens), head roles
and loss by position, as numbers (here) and as pictures (inspect.draw)."""

from mulm_jax.inspect.trace import InspectError, Trace, Tracer, token_pieces, trace

__all__ = ["InspectError", "Trace", "Tracer", "token_pieces", "trace"]
