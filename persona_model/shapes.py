"""The shapes persona_model/tiny.py builds models of: its own tiny ones for tests, and the real
models' shapes with random weights for benchmarks. Apart from the builder, so that a command line
can offer the names without importing torch."""

from __future__ import annotations

from typing import Any

# Real shapes, from each model's published config.json (see docs/benchmarks.md).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=None, tie_word_embeddings=True),
    # still tiny (0.9 M parameters), but able to learn facts through a LoRA: the wider init lets
    # logits grow past what frozen 0.02-std embeddings allow (docs/learning.md)
    "learner": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=None, tie_word_embeddings=True, initializer_range=0.1),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=8192),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                         tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=8192),
    # Qwen2.5's shape as a Llama config with q/k/v bias: the same compute, and AutoTokenizer
    # keeps our tokenizer (it swaps in Qwen's own rules for any folder of model type qwen2)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         attention_bias=True, max_position_embeddings=32768),
}
