"""Sampling never fails on an odd temperature and never picks an id the tokenizer cannot decode."""
import pytest
import torch

from smollm135_model import GPT2_VOCAB_SIZE, PRESETS, SmoLM135_Model, sample_next_token
from smolm135.data.tokenizer import get_tokenizer

PADDED = PRESETS["tiny"].vocab_size  # 50,304: 47 rows past GPT-2's 50,257 tokens


def logits_that_favour_padding(batch: int = 4) -> torch.Tensor:
    logits = torch.randn(batch, PADDED)
    logits[:, GPT2_VOCAB_SIZE:] = 50.0  # an undertrained model on odd data can rank a padding row first
    return logits


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, 5e-324, 1e-5, 0.0, -1.0, float("nan")])
def test_a_tiny_or_odd_temperature_decodes_greedily_instead_of_producing_nan(temperature):
    logits = torch.randn(3, 100) * 30
    assert torch.equal(sample_next_token(logits, temperature, top_k=50, top_p=0.95), logits.argmax(dim=-1))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, None, None), (1.0, None, None), (0.8, 200, 0.95),
                                                       (2.0, None, 1.0)])
def test_padding_ids_are_never_sampled_when_the_vocabulary_is_given(temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = sample_next_token(logits_that_favour_padding(), temperature, top_k, top_p, generator,
                                vocab_limit=GPT2_VOCAB_SIZE)
        assert (ids < GPT2_VOCAB_SIZE).all()
    # without the limit the padding rows win: the limit is what keeps them out
    assert (sample_next_token(logits_that_favour_padding(), 0.0) >= GPT2_VOCAB_SIZE).all()


def test_generate_with_the_tokenizers_vocabulary_always_decodes(monkeypatch):
    torch.manual_seed(0)
    model = SmoLM135_Model(PRESETS["tiny"]).eval()
    forward = model.forward

    def favour_padding(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        return logits.index_fill(-1, torch.arange(GPT2_VOCAB_SIZE, PADDED), 40.0), loss

    monkeypatch.setattr(model, "forward", favour_padding)
    encoder = get_tokenizer()
    out = model.generate(torch.tensor([[464]]), max_new_tokens=8, temperature=0.8, top_k=200,
                         generator=torch.Generator().manual_seed(1), vocab_limit=encoder.n_vocab)
    assert encoder.decode(out[0].tolist())  # a padding id would raise KeyError here
