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
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

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


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "sun", "is", "hot",
         "cold", "rain", "fell", "##s", "##ing", "hello", "world", ".", ","]
SENTENCES = ["the cat sat on the mat.", "a dog is running in the park, the sun is hot", "hello"]


def bert():
    """A tiny BERT encoder with a WordPiece tokenizer, and mean-pooled, L2-normalised sentence
    embeddings of SENTENCES as a padded batch (sentence-transformers' default)."""
    out = os.path.join(ROOT, "tiny-bert")
    os.makedirs(out, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"[unused{i}]" for i in range(128 - len(vocab))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.save(os.path.join(out, "tokenizer.json"))
    torch.manual_seed(99)
    cfg = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.2)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    rows = [tok.encode(t).ids for t in SENTENCES]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    enc = {"input_ids": ids, "attention_mask": attn}
    m64 = model.to(torch.float64)
    with torch.no_grad():
        hidden = m64(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
    ref = {
        "sentences": SENTENCES,
        "ids": enc["input_ids"].tolist(),
        "lengths": enc["attention_mask"].sum(1).tolist(),
        "hidden": hidden.to(torch.float32).tolist(),
        "embeddings": emb.to(torch.float32).tolist(),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print("tiny-bert ids", ref["ids"])


def main():
    bert()
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
