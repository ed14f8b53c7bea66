"""Generate a tiny random Llama model for fast tests (about 1 MB, a few seconds).

The shape is one vLLM's CPU attention accepts (head_dim 64). Its text is random,
as it should be: tests check the plumbing, not the prose.

    python -m llmkit.tiny_model [DEST]     # default: <cache>/models/tiny-llama
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from llmkit.paths import cache_dir

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Runpod serverless workers stream tokens from vLLM to the client.",
    "What is the capital of France? The capital of France is Paris.",
    "A notebook cell tagged export becomes part of handler.py.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ !?.,;:'\"()[]{}",
] * 20


# Long enough for a test job that outlasts a 5 s execution timeout on a fast CPU.
MAX_POSITIONS = 8192


def default_dir() -> Path:
    return cache_dir() / "models" / "tiny-llama"


def build(dest: Path | None = None, seed: int = 0) -> Path:
    """Write the model to ``dest`` (atomically) unless it is already there, as built now."""
    dest = Path(dest or default_dir())
    if _current(dest / "config.json"):
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # an older build of the model
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            scratch.rename(dest)
        except OSError:
            if not _current(dest / "config.json"):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


def _current(config: Path) -> bool:
    return (config.is_file()
            and json.loads(config.read_text()).get("max_position_embeddings") == MAX_POSITIONS)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
