"""Tokenizers that need no download: the CLIP BPE built from local files, or one trained on your captions.

The released UniCL and MS-CLIP models use CLIP's byte-level BPE (49408 ids, `<|endoftext|>` = 49407 is the largest
id). Its vocabulary ships inside `open_clip_torch` (`bpe_simple_vocab_16e6.txt.gz`), so it can be built offline.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer, PreTrainedTokenizerFast


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character map used to name byte-level BPE symbols."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _clip_tokenizer(vocab: dict[str, int], merges: list[str], pad_token: str, model_max_length: int) -> CLIPTokenizer:
    pairs = [tuple(merge.split()) for merge in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, pad_token=pad_token, model_max_length=model_max_length)


def clip_tokenizer_from_files(
    vocab_file: str | Path, merges_file: str | Path, pad_token: str = "<|endoftext|>", model_max_length: int = 77
) -> CLIPTokenizer:
    """transformers' CLIP tokenizer from a `vocab.json` + `merges.txt` pair.

    Args:
        pad_token: `"<|endoftext|>"` pads with end-of-text like UniCL and OpenAI CLIP; MS-CLIP pads with id 0 (the
            byte token `"!"`): pooling at the first end-of-text token makes both conventions give the same features.
    """
    vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
    lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line.strip() and not line.startswith("#version")]
    return _clip_tokenizer(vocab, merges, pad_token, model_max_length)


def clip_tokenizer_from_bpe_gz(
    bpe_path: str | Path | None = None, pad_token: str = "<|endoftext|>", model_max_length: int = 77
) -> CLIPTokenizer:
    """The CLIP BPE tokenizer from the official `bpe_simple_vocab_16e6.txt.gz` format.

    Args:
        bpe_path: the `.txt.gz` file; defaults to the copy inside `open_clip_torch`
            (`pip install hf-unified[clip-bpe]`).
    """
    if bpe_path is None:
        try:
            import open_clip
        except ImportError as error:
            raise ImportError(
                "the CLIP BPE vocabulary ships with open_clip_torch: `pip install 'hf-unified[clip-bpe]'`, "
                "or pass bpe_path / a tokenizer folder"
            ) from error
        bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    # Same slice as the official SimpleTokenizer: 49152 - 256 - 2 merges after the header line.
    merges = [line for line in lines[1 : 49152 - 256 - 2 + 1] if line.strip()]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return _clip_tokenizer({t: i for i, t in enumerate(tokens)}, merges, pad_token, model_max_length)


def train_caption_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, model_max_length: int = 32, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """A small lower-casing byte-level BPE tokenizer trained with `tokenizers` on your own captions.

    For training from scratch where no pretrained tokenizer can be downloaded. Texts are wrapped as
    `<|startoftext|> ... <|endoftext|>`, padded with `<|pad|>`; pool text towers at `eos_token_id`. The special
    tokens take ids 0-3 with `<|endoftext|>` = 3: not 2, the id for which transformers' `CLIPTextModel` keeps the
    legacy pooling at the largest token id, so a model trained with this tokenizer can be exported as a CLIPModel.
    """
    import sys

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["<|pad|>", "<|startoftext|>", "<|unk|>", "<|endoftext|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),  # off a terminal its bar refreshes would fill the log
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos, eos = tokenizer.token_to_id("<|startoftext|>"), tokenizer.token_to_id("<|endoftext|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=model_max_length,
    )


__all__ = ["clip_tokenizer_from_bpe_gz", "clip_tokenizer_from_files", "train_caption_tokenizer"]
