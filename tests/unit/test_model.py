"""The Transformer: padding invariance, incremental decoding, tied embeddings, bf16 autocast."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from async_nmt.config import BOS_ID, EOS_ID, PAD_ID, ModelConfig
from async_nmt.model.transformer import CrossAttention, EncoderOut, SelfAttention, Transformer, cpu_dropout

DEVICE = torch.device(os.environ.get("ASYNC_NMT_TEST_DEVICE", "cpu"))  # (the attention dropout test's)
CFG = ModelConfig(vocab_size=60, d_model=32, heads=4, enc_layers=2, dec_layers=2, ff_dim=64, max_positions=40)


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**CFG.__dict__, **overrides})
    return Transformer(cfg).eval()


def padded(seqs: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = width or max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def random_sentences(n: int, lo: int, hi: int, seed: int, bos: bool = False) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(4, CFG.vocab_size, (length,), generator=g).tolist()
        out.append([BOS_ID, *ids] if bos else [*ids, EOS_ID])
    return out


SRC = random_sentences(4, 3, 11, seed=1)
PREV = random_sentences(4, 2, 9, seed=2, bos=True)


def test_padding_does_not_change_the_logits_of_real_positions():
    model = make_model()
    with torch.no_grad():
        tight = model(padded(SRC), padded(PREV))
        # Extra pad columns on both sides, and two more sentences in the batch.
        wide = model(padded(SRC + SRC[:2][::-1], width=24), padded(PREV + PREV[:2], width=17))
    for i, prev in enumerate(PREV):
        n = len(prev)
        torch.testing.assert_close(wide[i, :n], tight[i, :n], rtol=1e-5, atol=1e-5)
    # ...and each sentence alone, with no padding at all, gives the same logits too.
    with torch.no_grad():
        alone = model(padded(SRC[3:]), padded(PREV[3:]))
    torch.testing.assert_close(alone[0], tight[3, : len(PREV[3])], rtol=1e-5, atol=1e-5)


def test_an_encoder_on_the_real_source_rows_gives_the_padded_encoders_memory_and_gradients():
    """`encode(src, rows)` computes on the real source positions only (training's packing): its memory is the
    padded encoder's at those positions and zero elsewhere, and the gradients it passes back are the same."""
    src = padded(SRC, width=16)
    rows = torch.nonzero(src.view(-1).ne(PAD_ID)).view(-1)
    out = {}
    for packed in (False, True):
        model = make_model()
        memory = model.encode(src, rows if packed else None).memory
        real = src.ne(PAD_ID)
        memory[real].pow(2).sum().backward()  # (the padded memory's pads are masked where it is read)
        out[packed] = memory.detach(), {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(out[True][0][real], out[False][0][real], rtol=1e-5, atol=1e-5)
    assert out[True][0][~real].eq(0).all() and out[False][0][~real].ne(0).all()
    for name, grad in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_decoder_on_the_real_target_rows_gives_the_padded_decoders_states_and_gradients():
    """`hidden(src, prev, tgt_rows=rows)` computes the decoder on the real target positions only (training's
    packing) and returns their states alone: the padded decoder's states at those positions, in order,
    with the same gradients, the encoder's too."""
    src, prev = padded(SRC, width=16), padded(PREV, width=12)
    rows = torch.nonzero(prev.view(-1).ne(PAD_ID)).view(-1)
    assert len(rows) < prev.numel()
    out = {}
    for packed in (False, True):
        model = make_model()
        if packed:
            states = model.hidden(src, prev, tgt_rows=rows)
        else:
            states = model.hidden(src, prev).flatten(0, 1).index_select(0, rows)
        assert states.shape == (len(rows), CFG.d_model)
        states.pow(2).sum().backward()
        out[packed] = states.detach(), {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    for name, grad in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_source_pad_is_not_attended_to():
    # If pads were attended, changing the embedding of pad would change the output.
    model = make_model()
    src, prev = padded(SRC, width=16), padded(PREV)
    with torch.no_grad():
        before = model(src, prev)
        model.embed.weight[PAD_ID].normal_()
        after = model(src, prev)
    for i, p in enumerate(PREV):  # the pad logit itself moves with the (tied) pad embedding
        torch.testing.assert_close(after[i, : len(p), 1:], before[i, : len(p), 1:], rtol=1e-5, atol=1e-5)


def test_incremental_decoding_equals_full_decoding():
    model = make_model()
    src = padded(SRC)
    prev = torch.randint(4, CFG.vocab_size, (len(SRC), 9))
    prev[:, 0] = BOS_ID
    with torch.no_grad():
        enc = model.encode(src)
        full = model.decode(prev, enc)
        cache = model.new_cache()
        steps = [model.decode(prev[:, t : t + 1], enc, cache) for t in range(prev.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert model.decode(prev, enc, last_only=True).shape == (len(SRC), 1, CFG.vocab_size)


def test_reordering_the_cache_follows_the_rows():
    model = make_model()
    src = padded(SRC)
    prev = torch.randint(4, CFG.vocab_size, (len(SRC), 6))
    prev[:, 0] = BOS_ID
    index = torch.tensor([2, 2, 0])  # rows may repeat (beams) and disappear (finished sentences)
    with torch.no_grad():
        enc = model.encode(src)
        cache = model.new_cache()
        for t in range(3):
            model.decode(prev[:, t : t + 1], enc, cache)
        model.reorder_cache(cache, index)
        enc2 = model.reorder_encoder_out(enc, index)
        steps = [model.decode(prev[index, t : t + 1], enc2, cache) for t in range(3, 6)]
        full = model.decode(prev[index], enc2)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 3:], rtol=1e-5, atol=1e-5)


def test_embeddings_are_tied_and_the_pad_row_starts_at_zero():
    model = make_model()
    assert model.embed.weight[PAD_ID].abs().sum() == 0
    # No separate output projection: the parameters are the embedding, attention, FFN and norms only.
    n_params = sum(p.numel() for p in model.parameters())
    d, f, v = CFG.d_model, CFG.ff_dim, CFG.vocab_size
    attn, ffn, norm = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
    expected = v * d + 2 * (attn + ffn + 2 * norm) + 2 * (2 * attn + ffn + 3 * norm) + 2 * norm
    assert n_params == expected
    with torch.no_grad():
        before = model(padded(SRC), padded(PREV))
        model.embed.weight[10] += 1.0  # the output projection moves with the embedding
        after = model(padded(SRC), padded(PREV))
    assert not torch.allclose(before[..., 10], after[..., 10])


def test_training_forward_is_causal_and_every_parameter_learns():
    model = make_model(dropout=0.0).train()
    src, prev = padded(SRC), padded(PREV)
    logits = model(src, prev)
    changed = prev.clone()
    changed[:, -1] = 5  # a later target token must not change earlier positions
    with torch.no_grad():
        logits2 = model(src, changed)
    torch.testing.assert_close(logits2[:, :-1], logits[:, :-1].detach(), rtol=1e-5, atol=1e-5)
    F.cross_entropy(logits.flatten(0, 1), torch.randint(4, CFG.vocab_size, (prev.numel(),))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_each_dropout_drops_only_where_it_is_placed(amp):
    """--dropout drops the sublayers' outputs and (as fairseq does) the embeddings; --embed-dropout the
    embeddings alone, --attention-dropout the attention weights alone (also through the math kernel that
    bf16 training takes on the CPU). Each one on its own makes the training forward random; in eval the
    model is the same whatever they are."""
    src, prev = padded(SRC), padded(PREV)

    def random_in_training(model: Transformer) -> tuple[bool, bool]:
        model.train()
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            embedded = [model.embed_tokens(src) for _ in range(2)]
            logits = [model(src, prev) for _ in range(2)]
        return not torch.equal(*embedded), not torch.equal(*logits)

    assert random_in_training(make_model(dropout=0.0)) == (False, False)
    assert random_in_training(make_model(dropout=0.3)) == (True, True)
    assert random_in_training(make_model(dropout=0.3, embed_dropout=0.0)) == (False, True)
    assert random_in_training(make_model(dropout=0.0, embed_dropout=0.3)) == (True, True)
    assert random_in_training(make_model(dropout=0.0, attention_dropout=0.3)) == (False, True)
    with torch.no_grad():
        plain = make_model(dropout=0.0).eval()(src, prev)
        dropped = make_model(dropout=0.3, embed_dropout=0.2, attention_dropout=0.3).eval()(src, prev)
    assert torch.equal(plain, dropped)  # (the same seed: the same weights)


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_attention_dropout_drops_the_weights_and_keeps_the_expectation(kind: str):
    """With values of one, attention gives one at each position in eval; in training, dropping weights
    at p = 0.5 and scaling the rest by 2 gives other numbers, whose mean over many draws is still one. The
    encoder's and decoder's self-attention and the decoder's cross-attention alike (on ASYNC_NMT_TEST_DEVICE:
    gpu_bench.sh runs this file on cuda:0, where SDPA's kernels drop)."""
    cfg, D = ModelConfig(**{**CFG.__dict__, "attention_dropout": 0.5}), CFG.d_model
    x = torch.randn(2 * 12, D, device=DEVICE)
    if kind == "self":
        attention, values, call = SelfAttention(cfg).to(DEVICE), lambda: attention.qkv, lambda: attention(x, 2)
    else:
        enc = EncoderOut(torch.randn(2, 9, D, device=DEVICE), torch.ones(2, 1, 1, 9, dtype=torch.bool, device=DEVICE))
        attention, values, call = CrossAttention(cfg).to(DEVICE), lambda: attention.kv, lambda: attention(x, enc)
    with torch.no_grad():
        values().weight.zero_()  # every key alike, every value one
        values().bias.copy_(torch.cat([torch.zeros(values().bias.numel() - D), torch.ones(D)]))
        attention.out.weight.copy_(torch.eye(D))
        attention.out.bias.zero_()
        attention.eval()
        torch.testing.assert_close(call(), torch.ones(24, D, device=DEVICE))
        attention.train()
        torch.manual_seed(0)
        draws = torch.stack([call() for _ in range(400)])
    assert not torch.allclose(draws[0], torch.ones(24, D, device=DEVICE))
    torch.testing.assert_close(draws.mean(0), torch.ones(24, D, device=DEVICE), atol=0.1, rtol=0)


def test_dropout_is_on_in_training_and_off_in_eval():
    model = make_model(dropout=0.3)
    src, prev = padded(SRC), padded(PREV)
    with torch.no_grad():
        assert torch.equal(model(src, prev), model(src, prev))
        model.train()
        assert not torch.equal(model(src, prev), model(src, prev))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_drops_at_rate_p_and_keeps_the_expectation(p):
    x = torch.rand(1001, 999) + 0.5  # an odd element count: the last 64-bit draw is only partly used
    torch.manual_seed(3)
    y = cpu_dropout(x, p)
    kept = y.ne(0)
    n = x.numel()
    assert abs(1 - kept.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    scale = 65536 / (65536 - round(p * 65536))
    assert torch.allclose(y[kept], x[kept] * scale)
    # the drops are spread over the tensor, not stuck to a lane of the four 16-bit numbers a draw gives
    lanes = kept.reshape(-1)[: n - n % 4].view(-1, 4).float().mean(0)
    assert (lanes - (1 - p)).abs().max() < 5 * (p * (1 - p) / (n / 4)) ** 0.5
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(x, p), y)  # the seed decides the mask


def test_cpu_dropout_of_a_p_next_to_1_keeps_almost_nothing_at_a_finite_scale():
    """--dropout 0.999995 (accepted: below 1) rounded to 65,536 of 65,536 dropped: ZeroDivisionError."""
    x = torch.ones(4096, 64)
    y = cpu_dropout(x, 0.999995)
    assert torch.isfinite(y).all() and y.ne(0).float().mean().item() < 1e-3


def test_cpu_dropout_in_bf16_scales_kept_elements_as_in_fp32():
    x = torch.rand(64, 64) + 0.5
    torch.manual_seed(4)
    ref = cpu_dropout(x, 0.1)
    torch.manual_seed(4)
    low = cpu_dropout(x.bfloat16(), 0.1)
    assert torch.equal(low, (x.bfloat16().float() * ref.ne(0) * (65536 / (65536 - 6554))).bfloat16())


def test_cpu_dropout_gradient_is_the_mask_times_the_scale():
    x = torch.rand(37, 11, requires_grad=True)
    y = cpu_dropout(x, 0.2)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g * y.detach() / x.detach())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="bf16 autocast on CPU needs oneDNN")
def test_bf16_autocast_is_close_to_fp32():
    model = make_model()
    src, prev = padded(SRC), padded(PREV)
    with torch.no_grad():
        ref = model(src, prev).float()
    for grad in (False, True):  # inference and training take different attention kernels on CPU
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(src, prev)
        assert torch.isfinite(low).all()
        assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()
        assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    low.float().logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_cudnn_attention_is_off_once_the_model_is_imported():
    """cuDNN's SDPA plans every new shape (tens of ms each on CUDA); training and search make new shapes."""
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_a_model_built_uninitialized_computes_as_its_loaded_weights_say_and_leaves_init_alone():
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    model = make_model(seed=3)
    empty = Transformer.uninitialized(CFG)
    with torch.no_grad():
        vector_to_parameters(parameters_to_vector(model.parameters()), empty.parameters())
    assert torch.equal(empty.positions, model.positions)
    assert torch.equal(empty.eval()(padded(SRC), padded(PREV)), model(padded(SRC), padded(PREV)))
    torch.manual_seed(3)  # the initializers work again afterwards: the same random model as before
    again = Transformer(CFG)
    assert torch.equal(parameters_to_vector(again.parameters()), parameters_to_vector(model.parameters()))


def test_a_cpu_decoding_step_attends_in_fp32_to_a_cache_kept_in_fp32():
    """One query a row without gradients (a decoding step) takes `attend_one_query` on the CPU: exact
    attention in fp32, masked as SDPA masks, where SDPA's bf16 kernel rounds; the cache it reads is kept
    in fp32 and contiguous, so that no step converts or copies it whole."""
    from async_nmt.model.transformer import attend, for_cache

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, n, 16, generator=g).bfloat16() for n in (1, 9, 9))
    mask = torch.rand(6, 1, 1, 9, generator=g) > 0.3
    mask[:, ..., 0] = True  # every row sees a key
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    with torch.inference_mode():
        step = attend(q, for_cache(k), for_cache(v), mask)
        rounded = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(step, exact, rtol=1e-5, atol=1e-5)
    assert (rounded.float() - exact).abs().max() > 1e-3  # what bf16 attention would have lost
    cached = for_cache(torch.randn(6, 9, 4, 16).bfloat16().transpose(1, 2))  # a [B, H, T, Dh] view, as qkv gives
    assert cached.dtype == torch.float32 and cached.is_contiguous()
