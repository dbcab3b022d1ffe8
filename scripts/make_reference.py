#!/usr/bin/env python3
"""Makes the committed torch/transformers reference data for tests/polytensor/model_ref.rs, once.

Run it only to regenerate the data (CI never installs torch):

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers safetensors
    /tmp/refenv/bin/python scripts/make_reference.py

For each tiny model (random weights, seeded) it writes tests/data/<name>/ with the checkpoint as
`save_pretrained` writes it (config.json, model.safetensors in f32) and reference.json: the
prompt ids, the logits of every prompt position, and a greedy continuation with the logits of
every step (the model fed its own greedy tokens, through its KV cache), all computed by
transformers in float64 from the f32 weights, rounded to f32.
"""
import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
PROMPT = [1, 17, 42, 7, 200, 5, 99, 128, 3, 250, 64]
STEPS = 12


def common(vocab=256):
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        initializer_range=0.25,
        hidden_act="silu",
    )


def build(name):
    torch.manual_seed(1234)
    if name == "tiny-llama":
        cfg = LlamaConfig(**common(), tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**common(), tie_word_embeddings=False, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
        # Qwen2's q/k/v biases start at zero: make them matter.
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.25)
    # RMSNorm weights start at one: spread them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


def main():
    for name in ["tiny-llama", "tiny-qwen2"]:
        model = build(name)
        out = os.path.join(ROOT, name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        m64 = model.to(torch.float64)
        with torch.no_grad():
            ids = torch.tensor([PROMPT])
            res = m64(ids, use_cache=True)
            prefill = res.logits[0].to(torch.float32)
            past = res.past_key_values
            tokens, steps = [], []
            logits = res.logits[0, -1]
            for _ in range(STEPS):
                nxt = int(torch.argmax(logits))
                tokens.append(nxt)
                r = m64(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = r.past_key_values
                logits = r.logits[0, -1]
                steps.append(logits.to(torch.float32).tolist())
        ref = {
            "prompt": PROMPT,
            "prefill_logits": prefill.tolist(),
            "greedy": tokens,
            "step_logits": steps,
        }
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(ref, f)
        gen = os.path.join(out, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
        top2 = sorted(prefill[-1].tolist())[-2:]
        print(name, "greedy", tokens, "last prefill margin", top2[1] - top2[0])


if __name__ == "__main__":
    main()
