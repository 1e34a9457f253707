"""Pure transformer building blocks (no I/O): attention, positional encodings, feed-forward, blocks."""
