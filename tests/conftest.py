"""Fixtures shared by the test modules (tiny model builders: helpers.py; stand-ins in real formats: standins.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """torch on 1 intra-op thread for the test (the CI box has 2 shared cores: more threads only spin against
    other processes); the previous count is restored after it. Use with ``pytest.mark.usefixtures``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_unitlm_dir(tmp_path_factory):
    """A tiny random LLaMA unit LM (20 units, offset 2, bos = eos = 1, pad 0, context 64) saved as the unitlm
    stage saves one (``unitlm.json`` + ``hf/``); load it with alignslm.lm.unitlm.load_unitlm."""
    import json

    from helpers import tiny_llama

    d = tmp_path_factory.mktemp("tiny_unitlm")
    tiny_llama(22, max_positions=64, bos_token_id=1, eos_token_id=1, pad_token_id=0).save_pretrained(d / "hf")
    (d / "unitlm.json").write_text(json.dumps({"path": str(d / "hf"), "offset": 2, "n_units": 20,
                                               "bos_id": 1, "eos_id": 1, "pad_id": 0}))
    return d


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A tiny random LLaMA text LM with a byte-level BPE tokenizer and a chat template, in the HF format the
    in-process judge backend (alignslm.judge.TransformersBackend) loads."""
    from helpers import tiny_llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_judge")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Score: 1", "Score: 2", "Score: 3", "Score: 4", "Score: 5", "The cook washed the pan.",
              "The farmer fed the pig on the farm.", "Beginning Continuation very likely unlikely relevant"]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    fast.save_pretrained(d)
    tiny_llama(len(fast), max_positions=1024, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
               pad_token_id=fast.pad_token_id).save_pretrained(d)
    return d
