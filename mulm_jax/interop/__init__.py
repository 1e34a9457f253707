"""Hugging Face interop: GPT-2 / Llama / Mistral / Qwen2 / Phi-3 checkpoints imported as runs (convert.from_hf),
runs exported back (convert.to_hf)."""
