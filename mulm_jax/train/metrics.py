"""Run metrics: metrics.jsonl rows, TensorBoard events, and a console progress line (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from mulm_jax.runs import metrics_path


def _summary_writer() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch whenever it is installed
    (for torch tensors, which are never written here), and that import alone costs a start-up about 3 s of CPU."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one JSON object per line to DIR/metrics.jsonl and mirrors scalars to TensorBoard in DIR/tensorboard."""

    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = metrics_path(workdir)
        self._tb = None
        if enabled:
            self._tb = _summary_writer()(str(Path(workdir) / "tensorboard"), flush_secs=10)

    def drop_rows_after(self, step: int) -> None:
        """Forget rows a killed run wrote past the checkpoint this run starts from (step 0: all), so each step
        appears once."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"time": time.time(), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One console line: step, loss, tokens/s and time left; redrawn in place on a terminal."""

    def __init__(self, total_steps: int, enabled: bool = True, bar: bool = True):
        self.total = total_steps
        self.enabled = enabled  # messages
        self.bar = enabled and bar  # the per-step line
        self.tty = sys.stderr.isatty()

    def update(self, step: int, loss: float, tokens_per_sec: float, sec_per_step: float) -> None:
        if not self.bar:
            return
        left = max(self.total - step, 0) * sec_per_step
        width = 24
        done = int(width * step / max(self.total, 1))
        line = (
            f"[{'#' * done}{'.' * (width - done)}] step {step}/{self.total}  loss {loss:.4f}  "
            f"{tokens_per_sec:,.0f} tok/s  {int(left // 60)}m{int(left % 60):02d}s left"
        )
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\n" if self.tty else "") + text + "\n")
            sys.stderr.flush()
