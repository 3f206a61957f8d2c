"""minilm-lora: LoRA fine-tunes of the real all-MiniLM-L6-v2 on small text tasks the kit generates (DESIGN §3).

The Spectral DeTuning zoo on a real pretrained transformer (lab 05; Horwitz et al., ICML 2024, §3): many LoRAs
of *one* base, all with the same rank ``r``, the same ``lora_alpha`` and the same target layers, so that each
adapted weight is ``W'_i = W_P + (alpha/r)·B_i A_i`` with a shared, recoverable ``W_P``.

* **Tasks** are sentence classification problems built from templates and word lists (no download): topic
  (4 classes), sentiment with negation (2), parity of a number word (2), who-acts word order (2), tense (3).
  Each adapter is one task with its own seed, learning rate and weight decay.
* **Model**: LoRA (peft) on ``query``, ``key`` and ``value`` of the *last two* encoder layers (4 and 5), plus a
  small linear head per task on the mean-pooled sentence embedding. Layers 0–3 stay frozen and un-adapted, so
  their output is computed once per sentence and cached; training runs only the top two layers.
* **Batched**: the adapters of a chunk train together through ``labkit.lora.BatchedLoRA`` (K adapters ride on
  the batch dimension of one frozen base), with ``labkit.training.fit_stacked`` and ``BatchedAdamW`` (each slice
  its own lr and weight decay, the same update ``torch.optim.AdamW`` would make for it alone).
  ``train_adapter_peft`` is the faithful one-at-a-time peft loop it is tested and benchmarked against
  (``trainer="peft"`` builds with it).
* **Stored** as real peft adapters (``adapter_config.json`` + ``adapter_model.safetensors``, base name
  ``sentence-transformers/all-MiniLM-L6-v2``, target layers as one regex string so the file is byte-stable) and
  the task head as ``head.safetensors`` next to them (``weight: [C, 384]``, ``bias: [C]``, labels in metadata).
  Load: ``PeftModel.from_pretrained(labkit.text.load_minilm(), folder)``; logits = head(mean_pool(hidden)).

Determinism and resume: every adapter's randomness (LoRA init, head init, batch order, hyper-parameters) comes
from a seed derived from its id (``labkit.seeds.stable_seed``); chunks are fixed by the plan, not by what is already built, so a resumed build
writes byte-identical files.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from labkit.seeds import stable_seed
from labkit.text import BASE_MODEL_ID, EMBED_DIM, load_minilm, mean_pool, tokenize
from labkit.training import BatchedAdamW, fit_stacked, lora_parameters

__all__ = ["TASKS", "MiniLMLoraSettings", "TextTask", "adapter_logits", "build", "encode_task", "load_head",
           "lora_config", "make_task", "plan", "settings", "target_modules", "target_regex", "train_adapter_peft",
           "train_chunk"]

HEAD_FILE = "head.safetensors"

# ------------------------------------------------------------------------------------------------- tasks

_PEOPLE = ["my sister", "the teacher", "our neighbour", "a stranger", "the old man", "my friend", "the students",
           "her brother", "the manager", "a little girl", "the journalist", "my parents"]

_TOPICS = {
    "sport": ["football", "the tennis final", "the marathon", "basketball", "the swimming race", "the referee",
              "the goalkeeper", "the cycling tour", "the boxing match", "the hockey team", "the penalty kick",
              "the olympic sprint"],
    "food": ["the pasta", "a bowl of soup", "the sandwich", "chocolate cake", "the salad", "fresh bread",
             "fried rice", "the pizza", "the cheese", "a spicy curry", "the pancakes", "roasted vegetables"],
    "weather": ["the rain", "the storm", "the snow", "the sunshine", "the wind", "the fog", "the heatwave",
                "the thunder", "the hail", "the clouds", "the frost", "the drought"],
    "music": ["the guitar", "the concert", "the violin", "the choir", "the jazz band", "the drummer",
              "the symphony", "the piano", "the new album", "the opera", "the singer", "the trumpet"],
}
_TOPIC_TEMPLATES = ["{who} talked about {x} all evening.", "{who} could not stop thinking about {x}.",
                    "everyone was surprised by {x} today.", "{who} wrote a long post about {x}.",
                    "{x} was all {who} wanted to discuss.", "we read an article on {x}.",
                    "{who} asked me about {x}.", "nobody expected {x} to be like that."]

_THINGS = ["movie", "hotel", "meal", "service", "book", "game", "trip", "concert", "lecture", "phone", "show",
           "room"]
_POSITIVE = ["great", "wonderful", "excellent", "pleasant", "delightful", "fantastic", "lovely", "superb"]
_NEGATIVE = ["terrible", "awful", "boring", "disappointing", "horrible", "dreadful", "poor", "unpleasant"]
_SENTIMENT_TEMPLATES = ["the {thing} was {neg}{adj}.", "honestly, the {thing} is {neg}{adj}.",
                        "{who} said the {thing} was {neg}{adj}.", "i think this {thing} is {neg}{adj}."]

_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_OBJECTS = ["apples", "books", "chairs", "tickets", "candles", "pencils", "cups", "stamps", "shirts", "coins"]
_NUMBER_TEMPLATES = ["{who} bought {n} {obj}.", "there were {n} {obj} on the table.",
                     "{who} counted {n} {obj} yesterday.", "we need {n} {obj} for the party."]

_ANIMALS = ["dog", "horse", "mouse", "rabbit", "fox", "bird", "goat", "duck"]
_ACTIONS = ["chased", "followed", "watched", "bit", "pushed", "ignored", "scared", "found"]
_AGENT_TEMPLATES = ["the {a} {verb} the {b}.", "this morning the {a} {verb} the {b}.",
                    "in the garden the {a} {verb} the {b}.", "suddenly the {a} {verb} the {b}."]

_VERBS = [("walked", "walks", "will walk"), ("cooked", "cooks", "will cook"), ("played", "plays", "will play"),
          ("painted", "paints", "will paint"), ("studied", "studies", "will study"),
          ("danced", "dances", "will dance"), ("worked", "works", "will work"),
          ("travelled", "travels", "will travel"), ("sang", "sings", "will sing"), ("read", "reads", "will read")]
_PLACES = ["at home", "in the park", "at school", "in the city", "with friends", "by the river", "at the office",
           "in the kitchen"]


def _topic(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(4)
    x = rng.choice(_TOPICS[list(_TOPICS)[label]])
    return rng.choice(_TOPIC_TEMPLATES).format(who=rng.choice(_PEOPLE), x=x), label


def _sentiment(rng: random.Random) -> tuple[str, int]:
    positive, negated = rng.random() < 0.5, rng.random() < 0.5
    adj = rng.choice(_POSITIVE if positive else _NEGATIVE)
    text = rng.choice(_SENTIMENT_TEMPLATES).format(thing=rng.choice(_THINGS), neg="not " if negated else "",
                                                   adj=adj, who=rng.choice(_PEOPLE))
    return text, int(positive != negated)  # 1 = positive overall


def _parity(rng: random.Random) -> tuple[str, int]:
    n = rng.randrange(1, len(_NUMBERS) + 1)
    text = rng.choice(_NUMBER_TEMPLATES).format(who=rng.choice(_PEOPLE), n=_NUMBERS[n - 1], obj=rng.choice(_OBJECTS))
    return text, n % 2  # 1 = odd


def _agent(rng: random.Random) -> tuple[str, int]:
    other, cat_acts = rng.choice(_ANIMALS), rng.random() < 0.5
    a, b = ("cat", other) if cat_acts else (other, "cat")
    return rng.choice(_AGENT_TEMPLATES).format(a=a, b=b, verb=rng.choice(_ACTIONS)), int(not cat_acts)


def _tense(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(3)
    return f"{rng.choice(_PEOPLE)} {rng.choice(_VERBS)[label]} {rng.choice(_PLACES)}.", label


TASKS: dict[str, tuple[tuple[str, ...], object]] = {
    "topic": (("sport", "food", "weather", "music"), _topic),
    "sentiment": (("negative", "positive"), _sentiment),
    "parity": (("even", "odd"), _parity),
    "agent": (("the cat acts", "the cat is acted on"), _agent),
    "tense": (("past", "present", "future"), _tense),
}


@dataclass(frozen=True)
class TextTask:
    """A generated sentence classification task: texts, labels ``y_*: [N]`` int64, class names ``labels``."""

    name: str
    labels: tuple[str, ...]
    train_texts: list[str]
    y_train: torch.Tensor
    test_texts: list[str]
    y_test: torch.Tensor


def make_task(name: str, n_train: int, n_test: int, seed: int = 0) -> TextTask:
    """Draw ``n_train + n_test`` distinct sentences of task ``name`` (a fixed function of name and seed)."""
    if name not in TASKS:
        raise ValueError(f"unknown text task {name!r}; tasks are {', '.join(TASKS)}")
    labels, sample = TASKS[name]
    rng = random.Random(f"minilm-lora/{name}/{seed}")
    seen: dict[str, int] = {}
    for _ in range(50 * (n_train + n_test)):
        text, y = sample(rng)
        seen.setdefault(text, y)
        if len(seen) == n_train + n_test:
            break
    else:
        raise ValueError(f"task {name!r} has fewer than {n_train + n_test} distinct sentences; ask for fewer")
    texts = list(seen)
    ys = torch.tensor([seen[t] for t in texts], dtype=torch.long)
    return TextTask(name, labels, texts[:n_train], ys[:n_train], texts[n_train:], ys[n_train:])


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MiniLMLoraSettings:
    """What a minilm-lora zoo is built from (defaults: the workshop profile).

    ``adapters_per_task`` LoRAs (rank ``r``, ``lora_alpha``, on ``projections`` of encoder ``layers``) per task of
    ``tasks``, each with its own lr and weight decay drawn from the choices, ``steps`` batches of ``batch_size``
    sentences (``n_train`` per task, ``n_test`` to test, ``max_length`` tokens); ``chunk`` adapters train together
    (``trainer="batched"``) or one at a time through peft (``"peft"``).
    """

    base_model: str = BASE_MODEL_ID
    layers: tuple[int, ...] = (4, 5)
    projections: tuple[str, ...] = ("query", "key", "value")
    r: int = 8
    lora_alpha: int = 16
    max_length: int = 16
    batch_size: int = 16
    lr_choices: tuple[float, ...] = (2e-3, 4e-3, 8e-3)
    weight_decay_choices: tuple[float, ...] = (0.0, 0.01)
    trainer: str = "batched"
    chunk: int = 10
    seed: int = 0
    tasks: tuple[str, ...] = tuple(TASKS)
    adapters_per_task: int = 4
    steps: int = 30
    n_train: int = 256
    n_test: int = 128
    # How each adapter's seed comes from ``seed`` and its id: the top 31 bits of sha256("minilm-lora/<seed>/<id>")
    # (labkit.seeds.stable_seed). Zoos built before this field existed used zlib.crc32; recording the rule gives
    # them a different folder, so a cached old zoo is never served as one built by this code.
    seed_rule: str = "sha256"

    def __post_init__(self):
        if self.seed_rule != "sha256":
            raise ValueError(f"minilm-lora derives seeds with sha256 only, not {self.seed_rule!r}")


def settings(profile: str) -> MiniLMLoraSettings:
    """Recipe settings per profile (their ``asdict`` is recorded and hashed into the zoo folder's name)."""
    if profile == "smoke":
        return MiniLMLoraSettings(tasks=("topic", "sentiment", "agent", "tense"), adapters_per_task=1, steps=12,
                                  n_train=64, n_test=32, chunk=4)
    return MiniLMLoraSettings()


def target_modules(s: MiniLMLoraSettings) -> list[str]:
    """Full module names of the adapted layers in a ``BertModel``, e.g. ``encoder.layer.4.attention.self.query``."""
    return [f"encoder.layer.{i}.attention.self.{p}" for i in s.layers for p in s.projections]


def target_regex(s: MiniLMLoraSettings) -> str:
    """The same targets as one full-match regex (peft stores a string as is; a list would be stored unordered)."""
    layers = "|".join(str(i) for i in s.layers)
    return rf"encoder\.layer\.({layers})\.attention\.self\.({'|'.join(s.projections)})"


def lora_config(s: MiniLMLoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=0.0, bias="none", target_modules=target_regex(s))


def _wrap(bert, s: MiniLMLoraSettings):
    """``get_peft_model`` with this recipe's LoRA config (silencing transformers' deprecation chatter)."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(bert, lora_config(s))


def plan(s: MiniLMLoraSettings) -> list[dict]:
    """One spec per adapter: id, task, seed, lr, weight decay, split — a pure function of the settings."""
    splits = ["train", "train", "val", "test"]
    specs = []
    for task in s.tasks:
        for j in range(s.adapters_per_task):
            model_id = f"{task}-{j:02d}"
            seed = stable_seed(f"minilm-lora/{s.seed}/{model_id}", bits=31)
            rng = random.Random(seed)
            specs.append({"id": model_id, "task": task, "seed": seed, "lr": rng.choice(s.lr_choices),
                          "weight_decay": rng.choice(s.weight_decay_choices), "split": splits[j % len(splits)]})
    return specs


# ------------------------------------------------------------------------------------------ cached inputs


@dataclass(frozen=True)
class EncodedTask:
    """A task's sentences after the frozen layers below the first adapted one.

    ``h_*: [N, T, 384]`` hidden states entering layer ``layers[0]``; ``mask_*: [N, T]``; ``y_*: [N]``.
    """

    task: TextTask
    h_train: torch.Tensor
    mask_train: torch.Tensor
    h_test: torch.Tensor
    mask_test: torch.Tensor


def _attention_mask(bert, hidden: torch.Tensor, mask: torch.Tensor):
    """The mask ``BertModel.forward`` builds for its layers (its format depends on the attention backend)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)


@torch.no_grad()
def _hidden_below(bert, texts: list[str], first_layer: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and layers ``0 … first_layer-1`` (= ``hidden_states[first_layer]`` of the full model)."""
    device = next(bert.parameters()).device
    enc = {k: v.to(device) for k, v in tokenize(texts, max_length=max_length).items()}
    hidden = bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
    attn = _attention_mask(bert, hidden, enc["attention_mask"])
    for layer in bert.encoder.layer[:first_layer]:
        hidden = layer(hidden, attn)
    return hidden, enc["attention_mask"]


def encode_task(bert, task: TextTask, s: MiniLMLoraSettings) -> EncodedTask:
    """Run the frozen layers ``0 … layers[0]-1`` once on every sentence of ``task``."""
    first = min(s.layers)
    h_tr, m_tr = _hidden_below(bert, task.train_texts, first, s.max_length)
    h_te, m_te = _hidden_below(bert, task.test_texts, first, s.max_length)
    return EncodedTask(task, h_tr, m_tr, h_te, m_te)


def _top_layers(bert, hidden: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
    """Layers ``first …`` of the encoder on ``hidden: [N, T, H]`` → mean-pooled ``[N, H]``."""
    attn = _attention_mask(bert, hidden, mask)
    for layer in bert.encoder.layer[first:]:
        hidden = layer(hidden, attn)
    return mean_pool(hidden, mask)


# --------------------------------------------------------------------------------------------- training


def _head_init(seed: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear(384, C)``-style init (uniform ±1/sqrt(384)) from the adapter's own seed; bias 0."""
    g = torch.Generator().manual_seed(seed + 1)
    bound = 1.0 / math.sqrt(EMBED_DIM)
    return (torch.rand(n_classes, EMBED_DIM, generator=g) * 2 - 1) * bound, torch.zeros(n_classes)


def _batch_order(seed: int, n: int, steps: int, batch_size: int) -> torch.Tensor:
    """``[steps, batch_size]`` row indices: concatenated random permutations of the training set."""
    g = torch.Generator().manual_seed(seed + 2)
    need = steps * batch_size
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-need // n))])
    return order[:need].view(steps, batch_size)


def train_chunk(bert, specs: list[dict], encoded: dict[str, EncodedTask], s: MiniLMLoraSettings,
                progress: bool = False):
    """Train the adapters ``specs`` together (one ``BatchedLoRA`` on ``bert``).

    Returns ``(lora, heads, metrics)``: ``heads[k] = (weight [C_k, 384], bias [C_k])`` and one metrics dict per
    adapter (final train/test loss and accuracy).
    """
    from labkit.lora import BatchedLoRA

    K, first, B = len(specs), min(s.layers), s.batch_size
    lora = BatchedLoRA(bert, target_modules(s), [sp["seed"] for sp in specs], r=s.r, alpha=s.lora_alpha)
    n_classes = [len(encoded[sp["task"]].task.labels) for sp in specs]
    C = max(n_classes)
    W, b = torch.zeros(K, C, EMBED_DIM), torch.zeros(K, C)
    valid = torch.zeros(K, C, dtype=torch.bool)
    for k, sp in enumerate(specs):
        W[k, :n_classes[k]], b[k, :n_classes[k]] = _head_init(sp["seed"], n_classes[k])
        valid[k, :n_classes[k]] = True
    device = lora.A[0].device
    W, b, valid = W.to(device).requires_grad_(), b.to(device).requires_grad_(), valid.to(device)
    trainable = {**lora_parameters(lora), "W": W, "b": b}
    opt = BatchedAdamW(trainable, torch.tensor([sp["lr"] for sp in specs]),
                       torch.tensor([sp["weight_decay"] for sp in specs]))

    def logits(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [K, N, T, H] → [K, N, C]
        n = h.shape[1]
        with lora.attached():
            pooled = _top_layers(bert, h.flatten(0, 1), mask.flatten(0, 1), first).view(K, n, EMBED_DIM)
        out = torch.einsum("knh,kch->knc", pooled, W) + b[:, None]
        return out.masked_fill(~valid[:, None], -torch.inf)

    def losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [K, N, C], [K, N] → [K]
        return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    tasks = [encoded[sp["task"]] for sp in specs]
    orders = torch.stack([_batch_order(sp["seed"], len(t.task.y_train), s.steps, B) for sp, t in zip(specs, tasks)])

    def loss_fn(step: int) -> torch.Tensor:  # [K]
        idx = orders[:, step]
        h = torch.stack([t.h_train[i] for t, i in zip(tasks, idx)])
        mask = torch.stack([t.mask_train[i] for t, i in zip(tasks, idx)])
        y = torch.stack([t.task.y_train[i] for t, i in zip(tasks, idx)]).to(device)
        return losses(logits(h, mask), y)

    fit_stacked(trainable, loss_fn, s.steps, opt, progress="LoRA steps" if progress else None)

    metrics = [{} for _ in specs]
    with torch.no_grad():
        for split in ("train", "test"):
            h = torch.stack([getattr(t, f"h_{split}") for t in tasks])
            mask = torch.stack([getattr(t, f"mask_{split}") for t in tasks])
            y = torch.stack([getattr(t.task, f"y_{split}") for t in tasks]).to(device)
            out = torch.cat([logits(h[:, i:i + 64], mask[:, i:i + 64]) for i in range(0, h.shape[1], 64)], 1)
            loss, acc = losses(out, y), (out.argmax(-1) == y).float().mean(1)
            for k in range(K):
                metrics[k][f"{split}_loss"] = round(loss[k].item(), 6)
                metrics[k][f"{split}_acc"] = round(acc[k].item(), 6)
    heads = [(W[k, :n_classes[k]].detach().cpu().clone(), b[k, :n_classes[k]].detach().cpu().clone())
             for k in range(K)]
    return lora, heads, metrics


def train_adapter_peft(spec: dict, encoded: EncodedTask, s: MiniLMLoraSettings):
    """The faithful one-at-a-time reference: peft ``get_peft_model`` on a fresh MiniLM, ``torch.optim.AdamW``.

    Same init (A from the adapter's seed, as ``BatchedLoRA`` draws it; B = 0), same batches, same head.
    Returns ``(peft_model, (weight, bias), metrics)``.
    """
    device = encoded.h_train.device
    model = _wrap(load_minilm(device), s)
    g = torch.Generator().manual_seed(spec["seed"])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in target_modules(s):
            A = params[f"base_model.model.{name}.lora_A.default.weight"]
            A.copy_((torch.rand(A.shape, generator=g) * 2 - 1) / math.sqrt(A.shape[1]))  # as BatchedLoRA draws it
            params[f"base_model.model.{name}.lora_B.default.weight"].zero_()
    n_classes = len(encoded.task.labels)
    head = nn.Linear(EMBED_DIM, n_classes).to(device)
    with torch.no_grad():
        head.weight.copy_(_head_init(spec["seed"], n_classes)[0])
        head.bias.zero_()
    y_train = encoded.task.y_train.to(device)
    bert, first = model.base_model.model, min(s.layers)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(trainable, lr=spec["lr"], weight_decay=spec["weight_decay"])
    order = _batch_order(spec["seed"], len(encoded.task.y_train), s.steps, s.batch_size)
    for idx in order:
        out = head(_top_layers(bert, encoded.h_train[idx], encoded.mask_train[idx], first))
        loss = nn.functional.cross_entropy(out, y_train[idx.to(device)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    metrics = {}
    with torch.no_grad():
        for split in ("train", "test"):
            out = head(_top_layers(bert, getattr(encoded, f"h_{split}"), getattr(encoded, f"mask_{split}"), first))
            y = getattr(encoded.task, f"y_{split}").to(device)
            metrics[f"{split}_loss"] = round(nn.functional.cross_entropy(out, y).item(), 6)
            metrics[f"{split}_acc"] = round((out.argmax(-1) == y).float().mean().item(), 6)
    return model, (head.weight.detach().cpu().clone(), head.bias.detach().cpu().clone()), metrics


# ---------------------------------------------------------------------------------------------- storing


class _AdapterWithHead:
    """What ``ZooStore.save_adapter`` saves: the peft adapter files plus the task head as ``head.safetensors``."""

    def __init__(self, peft_model, head: tuple[torch.Tensor, torch.Tensor], metadata: dict):
        self.peft_model, self.head, self.metadata = peft_model, head, metadata

    def save_pretrained(self, folder: str) -> None:
        from pathlib import Path

        from labkit.tensor_files import save_safetensors

        self.peft_model.save_pretrained(folder)
        save_safetensors(Path(folder) / HEAD_FILE, {"weight": self.head[0], "bias": self.head[1]}, self.metadata)


def load_head(folder) -> tuple[nn.Linear, list[str]]:
    """The task head stored next to an adapter: ``nn.Linear(384, C)`` and the class names."""
    import json
    from pathlib import Path

    from labkit.tensor_files import read_safetensors

    tensors, metadata = read_safetensors(Path(folder) / HEAD_FILE)
    head = nn.Linear(EMBED_DIM, tensors["weight"].shape[0])
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
    return head, json.loads(metadata["labels"])


@torch.no_grad()
def adapter_logits(model, head: nn.Linear, texts: list[str], max_length: int = 16) -> torch.Tensor:
    """Class logits ``[N, C]`` of a (peft-wrapped) MiniLM + head on ``texts``, through the full encoder."""
    enc = tokenize(texts, max_length=max_length)
    return head(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]))


def _chance(n_classes: int) -> float:
    return 1.0 / n_classes


def build(store, s: MiniLMLoraSettings, device) -> dict:
    """Train and store every planned adapter that is not in ``store`` yet (recipe contract, labkit.zoo)."""
    from tqdm.auto import tqdm

    if s.trainer not in ("batched", "peft"):
        raise ValueError(f"trainer must be 'batched' or 'peft', got {s.trainer!r}")
    specs = plan(s)
    todo = [sp for sp in specs if sp["id"] not in store]
    if not todo:
        return {"adapters": len(store), "trained": 0}
    device = torch.device(device) if device is not None else torch.device("cpu")
    bert = load_minilm(device).requires_grad_(False)
    tasks = sorted({sp["task"] for sp in todo})
    encoded = {t: encode_task(bert, make_task(t, s.n_train, s.n_test, seed=s.seed), s) for t in tasks}

    def row(sp: dict, task: TextTask, metrics: dict) -> dict:
        chance = _chance(len(task.labels))
        ok = metrics["test_acc"] >= chance + 0.25 * (1 - chance)
        return {"tree": "minilm", "parent": s.base_model, "split": sp["split"], "task": sp["task"],
                "labels": list(task.labels), "seed": sp["seed"],
                "hparams": {"lr": sp["lr"], "weight_decay": sp["weight_decay"], "steps": s.steps,
                            "batch_size": s.batch_size, "r": s.r, "lora_alpha": s.lora_alpha,
                            "target_modules": target_modules(s), "max_length": s.max_length, "seed": sp["seed"]},
                **metrics, "chance_acc": round(chance, 6), "trained_ok": ok,
                "flag": None if ok else "test accuracy near chance", "head_file": HEAD_FILE}

    def save(sp: dict, peft_model, head, metrics: dict) -> None:
        task = encoded[sp["task"]].task
        meta = {"task": sp["task"], "labels": list(task.labels), "model_id": sp["id"]}
        store.save_adapter(sp["id"], _AdapterWithHead(peft_model, head, meta), row(sp, task, metrics),
                           base_model=s.base_model)

    bar = tqdm(total=len(todo), desc="minilm-lora adapters", unit="lora")
    if s.trainer == "peft":
        for sp in todo:
            model, head, metrics = train_adapter_peft(sp, encoded[sp["task"]], s)
            save(sp, model, head, metrics)
            bar.update(1)
    else:
        # chunks come from the full plan (not from what is missing), so a resumed build trains the same groups
        chunks = [specs[i:i + s.chunk] for i in range(0, len(specs), s.chunk)]
        exporter = None
        for chunk in chunks:
            missing = [sp for sp in chunk if sp["id"] not in store]
            if not missing:
                continue
            for t in {sp["task"] for sp in chunk} - set(encoded):
                encoded[t] = encode_task(bert, make_task(t, s.n_train, s.n_test, seed=s.seed), s)
            lora, heads, metrics = train_chunk(bert, chunk, encoded, s, progress=True)
            if exporter is None:
                exporter = _wrap(load_minilm(device), s)
            for k, sp in enumerate(chunk):
                if sp["id"] in store:
                    continue
                save(sp, lora.export_adapter(k, exporter), heads[k], metrics[k])
                bar.update(1)
    bar.close()
    rows = [store.row(sp["id"]) for sp in specs]
    return {"adapters": len(rows), "trained": len(todo), "flagged": sum(not r["trained_ok"] for r in rows),
            "mean_test_acc": round(sum(r["test_acc"] for r in rows) / len(rows), 4)}
