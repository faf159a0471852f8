"""Write a Llama-architecture model folder (the tiny and random-weight models `omoide model tiny`
builds) as a GGUF file for llama.cpp, with its byte-level BPE tokenizer and chat template inside.

Tests and benchmarks use it to serve the same model from llama.cpp's server that the local backend
runs. For a real model from the hub, use llama.cpp's own convert_hf_to_gguf.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rotary halves (transformers' layout) to interleaved pairs (llama.cpp's), as llama.cpp's
    converter does for q and k."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path | str, out: Path | str, dtype: str = "f32") -> Path:  # noqa: C901 (one branch per GGUF field kind, as the format lists them)
    """Write `model_dir` (LlamaForCausalLM safetensors + a tokenizers BPE) to `out`; dtype f32 or f16."""
    model_dir, out = Path(model_dir), Path(out)
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"{model_dir} is a {config.get('model_type')!r} model; only llama is written here")
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    if tok["model"]["type"] != "BPE":
        raise ValueError(f"{model_dir}'s tokenizer is {tok['model']['type']}, not byte-level BPE")
    n_vocab = int(config["vocab_size"])
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(model_dir.name)
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(hidden)
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)

    # the tokenizer: byte-level BPE with GPT-2's pre-split, specials as control tokens
    vocab: dict[str, int] = tok["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    # a real shape's vocabulary is larger than our tokenizer's: the rest are plain tokens with a
    # visible text (random weights pick them, and llama.cpp would print nothing for unused ones)
    tokens = [f"<pad{i}>" for i in range(n_vocab)]
    types = [gguf.TokenType.NORMAL] * n_vocab
    for text, i in {**vocab, **specials}.items():
        if i < n_vocab:
            tokens[i] = text
            types[i] = gguf.TokenType.CONTROL if text in specials else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eos = specials[tok_config["eos_token"]]
    w.add_bos_token_id(int(config.get("bos_token_id") or eos))
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    if tok_config.get("pad_token") in specials:
        w.add_pad_token_id(specials[tok_config["pad_token"]])
    template = tok_config.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    if template:
        w.add_chat_template(template)

    # the weights, under llama.cpp's names
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    cast = np.float32 if dtype == "f32" else np.float16
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, value in tensors.items():
        value = value.astype(np.float32)
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            if config.get("tie_word_embeddings"):
                continue
            target = "output.weight"
        else:
            parts = name.split(".")  # model.layers.N.<module...>.weight|bias
            module, kind = ".".join(parts[3:-1]), parts[-1]
            target = f"blk.{parts[2]}.{names[module]}.{kind}"
            if module == "self_attn.q_proj":
                value = _permute(value, heads)
            elif module == "self_attn.k_proj":
                value = _permute(value, kv_heads)
        # norms and biases stay f32 (llama.cpp's converter does the same)
        w.add_tensor(target, value if value.ndim == 1 else value.astype(cast))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
