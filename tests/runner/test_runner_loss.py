"""The fused output layer and cross-entropy (gpujob.runner.loss) gives the loss and the gradients of the plain
way (a Linear over every position, ``.float()``, ``cross_entropy`` ignoring -100), in float32 and under
bf16 autocast, with padding anywhere; and a whole Whisper trained through it gets the gradients that
transformers' own forward and loss give, its tied token embeddings included."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from gpujob.runner.loss import IGNORE, DecoderLoss, fusable, linear_cross_entropy  # noqa: E402


def plain(hidden, weight, labels):
    logits = torch.nn.functional.linear(hidden, weight)
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")


def case(seed: int, rows: int, width: int, vocab: int, dim: int, padded: float):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, dim, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, dim, generator=g)).requires_grad_(True)
    labels = torch.randint(0, vocab, (rows, width), generator=g)
    labels[torch.rand(rows, width, generator=g) < padded] = IGNORE
    return hidden, weight, labels


def loss_and_grads(fn, hidden, weight, labels, autocast: bool):
    h, w = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(h, w, labels)
    (loss * 0.37).backward()  # a weight on the loss, as the training step scales it
    return loss.detach(), h.grad, w.grad


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 5), width=st.integers(1, 9), vocab=st.integers(2, 300),
       dim=st.integers(1, 24), padded=st.sampled_from([0.0, 0.3, 0.9]))
def test_fused_loss_and_gradients_equal_the_plain_cross_entropy_in_float32(seed, rows, width, vocab, dim, padded):
    hidden, weight, labels = case(seed, rows, width, vocab, dim, padded)
    want = loss_and_grads(plain, hidden, weight, labels, autocast=False)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, labels, autocast=False)
    assert got[0].dtype == torch.float32
    for name, a, b in zip(("loss", "d hidden", "d weight"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    if (labels == IGNORE).all():
        assert got[0].item() == 0.0 and not got[1].any() and not got[2].any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 4), width=st.integers(1, 8), vocab=st.integers(2, 300),
       dim=st.integers(1, 24))
def test_under_bf16_autocast_the_logits_are_those_of_a_bf16_linear(seed, rows, width, vocab, dim):
    hidden, weight, labels = case(seed, rows, width, vocab, dim, 0.3)
    want = loss_and_grads(plain, hidden, weight, labels, autocast=True)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, labels, autocast=True)
    # the same bf16 logits, so the same float32 loss; the gradients go through bf16 matmuls in both
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
    for name, a, b in zip(("d hidden", "d weight"), got[1:], want[1:]):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2, msg=name)


def test_without_gradients_nothing_is_kept_for_a_backward_pass():
    hidden, weight, labels = case(1, 3, 4, 50, 8, 0.2)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, labels)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, plain(hidden, weight, labels).detach())


def test_only_a_plain_bias_free_output_layer_is_fused():
    assert fusable(torch.nn.Linear(4, 10, bias=False))
    assert not fusable(torch.nn.Linear(4, 10, bias=True))

    class Adapted(torch.nn.Linear):  # a layer that adds to the Linear's output (as a LoRA adapter does)
        pass

    assert not fusable(Adapted(4, 10, bias=False))


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from gpujob.runner.model import load

    spec = NS(model=NS(checkpoint=str(tiny_model), language="el", task="transcribe", window_seconds=None),
              training=NS(dropout=0.0))
    return load(spec, torch.device("cpu"), for_training=True)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_whisper_gets_transformers_own_loss_and_gradients(loaded, dtype):
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    model, processor = loaded
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight  # tied: one parameter, two uses
    ids = [processor.tokenizer(text).input_ids for text in ("γεια σου", "καλημέρα κόσμε, τι κάνεις;", "ναι")]
    width = max(map(len, ids))
    labels = torch.tensor([i + [IGNORE] * (width - len(i)) for i in ids])
    decoder_input_ids = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    features = torch.randn(3, model.config.num_mel_bins, 2 * model.config.max_source_positions,
                           generator=torch.Generator().manual_seed(0))

    def run(fused: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            if fused:
                loss = DecoderLoss(model)(labels, decoder_input_ids, input_features=features)
            else:  # transformers' own loss is the token mean: times the tokens, the sum
                loss = model(input_features=features, labels=labels).loss * (labels != IGNORE).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want_loss, want = run(fused=False)
    got_loss, got = run(fused=True)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype is None else dict(rtol=3e-2, atol=3e-3)
    torch.testing.assert_close(got_loss, want_loss, **tol)
    assert got.keys() == want.keys()
    assert "model.decoder.embed_tokens.weight" in got  # the tied weight's gradient: the embedding's and the output's
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name, **tol)
