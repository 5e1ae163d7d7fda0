"""``freeze: {encoder_layers: N}`` with its frozen prefix cached per clip: the encoder's output, the loss and
every gradient are those of the whole model run as transformers runs it, whether the prefix comes from
the cache or is computed, and the cache is bypassed when the input changes every epoch (augmentation)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from gpujob.runner.model import load

    spec = NS(model=NS(checkpoint=str(tiny_model), language="el", task="transcribe", window_seconds=None), training=NS(dropout=0.0))
    return load(spec, torch.device("cpu"), for_training=True)


def clips(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.integers(4000, 40000)))).astype(np.float32) for _ in range(n)]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), n=st.integers(1, 3))
def test_the_cached_prefix_gives_the_encoders_own_output_loss_and_gradients(loaded, seed, n):
    from gpujob.runner.batches import Batch, features
    from gpujob.runner.evaluate import EncoderCache, encoder_states
    from gpujob.runner.model import Precision, freeze, frozen_prefix
    from gpujob.runner.loss import DecoderLoss
    from gpujob.runner.update import loss_sum

    model, processor = loaded
    freeze(model, NS(encoder_layers=1))
    model.train()
    assert frozen_prefix(model) == 1
    audio, keys = clips(seed, n), [f"clip-{seed}-{i}" for i in range(n)]
    fp32 = Precision("fp32", None, False)
    with torch.no_grad():
        whole = model.model.encoder(features(processor.feature_extractor, audio, torch.device("cpu"))).last_hidden_state
    cache = EncoderCache()
    first = encoder_states(model, processor.feature_extractor, audio, keys, torch.device("cpu"), fp32, cache)
    assert cache.hits == 0 and len(cache.states) == n
    again = encoder_states(model, processor.feature_extractor, audio, keys, torch.device("cpu"), fp32, cache)
    assert cache.hits == n
    torch.testing.assert_close(first, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, whole, rtol=1e-5, atol=1e-5)

    labels = [processor.tokenizer(f"γεια σου {i}").input_ids for i in range(n)]
    width = max(map(len, labels))
    batch = Batch(ids=keys, texts=[""] * n, audio=audio,
                  labels=torch.tensor([ids + [-100] * (width - len(ids)) for ids in labels]),
                  label_lengths=[len(ids) for ids in labels])

    def grads(cache_or_none):
        model.zero_grad(set_to_none=True)
        loss = loss_sum(DecoderLoss(model), model, processor, batch, torch.device("cpu"), fp32, cache_or_none)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    loss_plain, grad_plain = grads(None)        # transformers' own forward over the whole encoder
    loss_cached, grad_cached = grads(cache)     # the prefix from the cache, the trained layer run here
    torch.testing.assert_close(loss_cached, loss_plain, rtol=1e-5, atol=1e-5)
    assert any(name.startswith("model.encoder.layers.1.") for name in grad_cached)
    assert grad_cached.keys() == grad_plain.keys()
    for name in grad_plain:
        torch.testing.assert_close(grad_cached[name], grad_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_frozen_prefix_is_only_the_stem_and_leading_layers(loaded):
    from gpujob.runner.model import freeze, frozen_prefix
    from gpujob.runner.train_setup import train_cache_for
    from gpujob.runner.evaluate import EncoderCache

    model, _ = loaded
    for p in model.parameters():
        p.requires_grad_(True)
    assert frozen_prefix(model) == 0                     # nothing frozen
    freeze(model, "encoder")
    assert frozen_prefix(model) == 0                     # the whole encoder: cached whole, not as a prefix
    for p in model.model.encoder.layers[1].parameters():
        p.requires_grad_(True)
    assert frozen_prefix(model) == 1
    for p in model.model.encoder.conv1.parameters():
        p.requires_grad_(True)
    assert frozen_prefix(model) == 0                     # the stem trains: nothing before a layer is fixed

    cache = EncoderCache()
    assert train_cache_for(cache, None) is cache
    assert train_cache_for(cache, NS(active=True)) is None
    assert train_cache_for(cache, NS(active=False), spec_augment=True) is None
