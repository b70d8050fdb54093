"""CLIP text encoder: parity with transformers' CLIPTextModel, SD1.5 token-id convention, key layout."""

from __future__ import annotations

import torch

from grpose.diffusion.text_encoder import END_TOKEN, START_TOKEN, CLIPTextEncoder, tokenize

TINY = dict(vocab_size=49408, width=32, layers=2, heads=2, max_length=77, intermediate_size=64)


def test_short_prompt_ids():
    ids = tokenize(["a photo of a cat"])
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    expected = [49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70
    assert ids[0].tolist() == expected


def test_empty_prompt_is_start_then_end_padding():
    ids = tokenize([""])
    assert ids[0].tolist() == [START_TOKEN] + [END_TOKEN] * 76


def test_long_prompt_is_truncated_keeping_end_token():
    ids = tokenize(["cat " * 100, "a photo of a cat"])
    assert ids.shape == (2, 77)
    assert ids[0, 0].item() == START_TOKEN
    assert ids[0, 1:76].tolist() == [2368] * 75
    assert ids[0, 76].item() == END_TOKEN
    assert ids[1, 5].item() == 2368


def test_text_encoder_matches_transformers():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    ours = CLIPTextEncoder(**TINY).eval()
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=START_TOKEN,
        eos_token_id=END_TOKEN,
        pad_token_id=1,
    )
    reference = CLIPTextModel(config).eval()
    # transformers < 5 nests the modules under ``text_model``; 5.x puts them at the top level.
    prefix = (
        "transformer."
        if any(k.startswith("text_model.") for k in reference.state_dict())
        else "transformer.text_model."
    )
    state = {k.removeprefix(prefix): v for k, v in ours.state_dict().items()}
    result = reference.load_state_dict(state, strict=False)
    assert not result.missing_keys
    assert {k.rsplit(".", 1)[-1] for k in result.unexpected_keys} <= {"position_ids"}

    prompts = ["a photo of a cat", "", "a person dancing on the beach at sunset " * 3]
    with torch.no_grad():
        hidden = ours(prompts)
        input_ids = ours.tokenize(prompts)
        hidden_ref = reference(input_ids=input_ids).last_hidden_state
        hidden_from_ids = ours(input_ids)
    assert hidden.shape == (3, 77, 32)
    assert (hidden - hidden_ref).abs().max().item() <= 1e-4
    torch.testing.assert_close(hidden, hidden_from_ids)


def test_state_dict_keys_follow_hf_layout():
    keys = set(CLIPTextEncoder(**TINY).state_dict())
    assert "transformer.text_model.embeddings.position_ids" in keys
    assert "transformer.text_model.encoder.layers.1.self_attn.out_proj.weight" in keys
    assert "transformer.text_model.final_layer_norm.bias" in keys
    ids = CLIPTextEncoder(**TINY).state_dict()["transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.long and ids.shape == (1, 77)
