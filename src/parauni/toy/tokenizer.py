"""The toy world's tokenizer: the project's byte-level BPE trained on the toy vocabulary.

Built deterministically from a fixed corpus of toy captions, questions and answers, plus the
prompt templates, so that every toy word is one token; any other text still encodes (bytes).

:class:`ToyTokenizer` adds two things to the plain fast tokenizer, both for text a user types:

* it lowercases (a serialisable ``tokenizers`` normaliser): the toy corpus is lowercase, so
  ``"A RED CIRCLE"`` and ``"a red circle"`` give the same tokens.  The two capitalised template phrases
  (``"Generate an image"``, ``"Keep the image as it is"``) keep their case, so the prompt templates the toy
  models were trained on encode as before;
* it warns, once per word and tokenizer, about words outside the toy vocabulary (:data:`KNOWN_WORDS`, or the
  words of the largest toy world whose every shape and colour is one token of its vocabulary, see
  :func:`known_words`) and other characters (digits, emoji, accented letters): they still encode (as bytes)
  but the toy models never saw them, so the image they condition is arbitrary.

Each toy world has its own tokenizer (:func:`build_toy_tokenizer` with ``world``): v2's corpus holds its six
shapes and eight colours, so that each is one token as well.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast

from ..models.tokenizer import build_tokenizer
from .data import make_example, qa_pairs, sample_rng
from .prompts import NUMBER_WORDS, TASKS, make_plural, random_meta
from .world import RELATIONS
from .worlds import V1, WORLDS, World, get_world

TOY_VOCAB_SIZE = 512
_TEMPLATES = ("Generate an image: ", "Generate an image.", "Keep the image as it is.",
              "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
# template phrases whose capitals the trained toy models read (kept by the lowercasing normaliser)
_CASED_PHRASES = ("Generate an image", "Keep the image as it is")
_OTHER_WORDS = ("a", "an", "and", "are", "as", "color", "describe", "generate", "how", "image", "is", "it", "keep",
                "many", "no", "object", "objects", "of", "photo", "shape", "the", "there", "user", "assistant", "what",
                "yes")


def known_words(world: World | str = V1) -> frozenset[str]:
    """Every word of :func:`toy_corpus` of ``world`` and of the toy VLM's training questions."""
    w = get_world(world)
    return frozenset({*w.shapes, *(make_plural(s) for s in w.shapes), *w.colors, *NUMBER_WORDS,
                      *(x for r in RELATIONS for x in r.split()), *_OTHER_WORDS})


# every word of :func:`toy_corpus` (tests/test_cli_honesty.py checks this against the corpus) and of the toy
# VLM's training questions ("describe the image."), in the v1 world
KNOWN_WORDS = known_words(V1)
KNOWN_CHARS = frozenset(",.:?!;'\"-")
_WORD = re.compile(r"[a-z]+|[^\sa-z]")


def toy_corpus(n: int = 1500, seed: int = 12345, world: World | str = V1) -> list[str]:
    """Captions, GenEval-style prompts, questions and answers of the toy world, and the templates (v2: of its
    training distribution, without the held-out compositions)."""
    w = get_world(world)
    lines = list(_TEMPLATES)
    for i in range(n):
        ex = make_example(sample_rng(7, seed, i), world=w)
        lines.append(ex.caption)
        lines.extend(f"{q} {a}" for q, a in qa_pairs(ex.scene))
    rng = np.random.default_rng(seed)
    if w is V1:
        lines.extend(random_meta(rng, TASKS[i % len(TASKS)])["prompt"] for i in range(600))
    else:
        lines.extend(random_meta(rng, TASKS[i % len(TASKS)], w, "seen")["prompt"] for i in range(600))
    return lines


def toy_normalizer() -> normalizers.Normalizer:
    """Lowercase everything but the capitalised template phrases (serialisable in ``tokenizer.json``)."""
    marks = [chr(0xE000 + i) for i in range(len(_CASED_PHRASES))]  # private-use characters
    return normalizers.Sequence([
        *(normalizers.Replace(p, m) for p, m in zip(_CASED_PHRASES, marks, strict=True)),
        normalizers.Lowercase(),
        *(normalizers.Replace(m, p) for p, m in zip(_CASED_PHRASES, marks, strict=True)),
    ])


def unknown_words(text: str, special: tuple[str, ...] = (), known: frozenset[str] = KNOWN_WORDS) -> list[str]:
    """The words and characters of ``text`` (lowercased, ``special`` tokens removed) outside the toy vocabulary
    (``known``: default v1's)."""
    for s in special:
        text = text.replace(s, " ")
    for p in _CASED_PHRASES:
        text = text.replace(p, " ")
    return [w for w in _WORD.findall(text.lower()) if w not in known and w not in KNOWN_CHARS]


_IMAGE_TOKENS = ("start_image_token", "end_image_token", "context_image_token")


class ToyTokenizer(PreTrainedTokenizerFast):
    """The toy tokenizer: lowercases (:func:`toy_normalizer`) and warns once per unknown word.

    Saved folders keep ``tokenizer_class: TokenizersBackend`` (``AutoTokenizer`` loads them; the lowercasing
    normaliser is in their ``tokenizer.json``); :meth:`from_pretrained` loads any toy tokenizer folder."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend_tokenizer.normalizer = toy_normalizer()
        self._warned: set[str] = set()
        vocab = self.get_vocab()
        fits = [w for w in WORLDS.values() if all("\u0120" + x in vocab for x in (*w.shapes, *w.colors))]
        self.world = max(fits, key=lambda w: len(w.shapes) + len(w.colors)) if fits else V1
        self.known_words = known_words(self.world)

    @classmethod
    def wrap(cls, tok: PreTrainedTokenizerFast) -> ToyTokenizer:
        """A :class:`ToyTokenizer` over the vocabulary, merges and special tokens of ``tok``."""
        extra = {k: getattr(tok, k) for k in _IMAGE_TOKENS if getattr(tok, k, None)}
        return cls(tokenizer_object=tok.backend_tokenizer, pad_token=tok.pad_token, eos_token=tok.eos_token,
                   extra_special_tokens=extra, model_max_length=tok.model_max_length)

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs) -> ToyTokenizer:
        # through the plain class: transformers rebuilds a subclass's backend from the vocabulary alone
        return cls.wrap(PreTrainedTokenizerFast.from_pretrained(path, *args, **kwargs))

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        config = Path(save_directory) / "tokenizer_config.json"
        if config.is_file():
            data = json.loads(config.read_text())
            data["tokenizer_class"] = "TokenizersBackend"
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return files

    def _check(self, text) -> None:
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = [t for t in text if isinstance(t, str)]
        else:
            texts = []
        special = tuple(self.added_tokens_encoder)
        new = list(dict.fromkeys(w for t in texts for w in unknown_words(t, special, self.known_words)
                                 if w not in self._warned))
        if new:
            self._warned.update(new)
            world = self.world
            warnings.warn(f"the toy tokenizer does not know {', '.join(repr(w) for w in new)} (the toy models were "
                          f"trained on {len(self.known_words)} words: the shapes {', '.join(world.shapes)}, the "
                          f"colours {', '.join(world.colors)}, number words, positions); such input is encoded as "
                          "bytes the models never saw, so the image it conditions is arbitrary", UserWarning,
                          stacklevel=4)

    def _encode_plus(self, text, *args, **kwargs):
        self._check(text)
        return super()._encode_plus(text, *args, **kwargs)


def build_toy_tokenizer(world: World | str = V1) -> ToyTokenizer:
    """The toy tokenizer of ``world`` (a :class:`ToyTokenizer`); identical on every call."""
    corpus = toy_corpus() if get_world(world) is V1 else toy_corpus(world=world)
    return ToyTokenizer.wrap(build_tokenizer(corpus, vocab_size=TOY_VOCAB_SIZE))


def load_toy_tokenizer(path: str | Path) -> ToyTokenizer:
    """A saved toy tokenizer folder (e.g. the shipped ``weights/vlm``) as a :class:`ToyTokenizer`."""
    return ToyTokenizer.from_pretrained(str(path))
