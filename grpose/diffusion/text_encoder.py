"""CLIP ViT-L/14 text encoder of SD1.5 in the Hugging Face key layout, with an offline BPE tokenizer."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

START_TOKEN = 49406
END_TOKEN = 49407

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer():
    """open_clip's bundled CLIP BPE tokenizer (the same 49408-token vocabulary as CLIP ViT-L/14); loaded once.

    ``open_clip/tokenizer.py`` is self-contained, so it is loaded on its own: importing the ``open_clip`` package
    pulls in timm and transformers (seconds of import time) that tokenising does not need.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("CLIPTextEncoder.tokenize needs open_clip_torch (pip install open_clip_torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    try:
        module_spec = importlib.util.spec_from_file_location("_grpose_open_clip_tokenizer", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        simple_tokenizer = module.SimpleTokenizer
    except (ImportError, OSError, AttributeError) as err:
        log.debug("loading %s standalone failed (%s); importing open_clip", path, err)
        from open_clip.tokenizer import SimpleTokenizer as simple_tokenizer
    return simple_tokenizer()


def tokenize(texts: list[str] | str, max_length: int = 77) -> torch.LongTensor:
    """Token ids (B, max_length) in the SD1.5 / HF convention: start 49406, text, end 49407, padded with 49407.

    Text longer than ``max_length - 2`` tokens is truncated, keeping the end token at the last position.
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = _bpe_tokenizer()
    ids = torch.full((len(texts), max_length), END_TOKEN, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [START_TOKEN, *tokenizer.encode(text)[: max_length - 2], END_TOKEN]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ids


class CLIPEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings."""

    def __init__(self, vocab_size: int, width: int, max_length: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_length, width)
        # Persistent because SD1.5 / GRPose files carry it (transformers 4.19); the loader ignores it if absent.
        self.register_buffer("position_ids", torch.arange(max_length, dtype=torch.long)[None], persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with biased q/k/v/out projections."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, width // self.heads).transpose(1, 2)  # (B, N, W) -> (B, H, N, W/H)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), is_causal=True
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))  # (B, H, N, W/H) -> (B, N, W)


class CLIPMLP(nn.Module):
    """fc1, quick_gelu (x * sigmoid(1.702 x), as in CLIP), fc2."""

    def __init__(self, width: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer."""

    def __init__(self, width: int, heads: int, intermediate_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.mlp = CLIPMLP(width, intermediate_size)
        self.layer_norm2 = nn.LayerNorm(width, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """Stack of ``layers`` encoder layers (key ``layers.N``)."""

    def __init__(self, width: int, layers: int, heads: int, intermediate_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(width, heads, intermediate_size, layer_norm_eps) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder and final LayerNorm (HF ``CLIPTextTransformer`` names)."""

    def __init__(
        self,
        vocab_size: int,
        width: int,
        layers: int,
        heads: int,
        max_length: int,
        intermediate_size: int,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(vocab_size, width, max_length)
        self.encoder = CLIPEncoder(width, layers, heads, intermediate_size, layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(width, eps=layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


class _TextModelHolder(nn.Module):
    """Holds ``text_model`` so the keys read ``transformer.text_model.*`` as in HF's CLIPTextModel."""

    def __init__(self, text_model: CLIPTextTransformer) -> None:
        super().__init__()
        self.text_model = text_model


class CLIPTextEncoder(nn.Module):
    """Frozen CLIP text encoder of SD1.5 (ldm ``FrozenCLIPEmbedder``, layer "last"): text to (B, 77, width)."""

    def __init__(
        self,
        vocab_size: int = 49408,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        max_length: int = 77,
        intermediate_size: int = 3072,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"CLIPTextEncoder: width {width} is not divisible by heads {heads}")
        self.max_length = max_length
        self.transformer = _TextModelHolder(
            CLIPTextTransformer(vocab_size, width, layers, heads, max_length, intermediate_size, layer_norm_eps)
        )

    def tokenize(self, texts: list[str] | str) -> torch.LongTensor:
        """Token ids (B, max_length) on this module's device (see :func:`tokenize`)."""
        device = self.transformer.text_model.embeddings.token_embedding.weight.device
        ids = tokenize(texts, self.max_length)
        if device.type == "cuda":  # pinned + non_blocking: no wait for the GPU queue at the start of every step
            return ids.pin_memory().to(device, non_blocking=True)
        return ids.to(device)

    def forward(self, texts: list[str] | str | torch.Tensor) -> torch.Tensor:
        """``last_hidden_state`` after the final LayerNorm, (B, max_length, width), for prompts or token ids."""
        input_ids = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.transformer.text_model(input_ids)
