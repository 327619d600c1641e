"""Sequence-to-sequence models (Keras 3): a Transformer and an attentional LSTM.

Both models take ``(source_ids, decoder_input_ids)`` (int32, ``0`` = padding)
and return float32 logits ``[batch, target_length, vocab]``. For decoding
they expose ``encode(src) -> memory`` (a dict of tensors),
``decode(memory, prefix) -> logits`` (the whole prefix recomputed: the
uncached reference) and, for incremental decoding,
``start_decoding(memory) -> (context, cache)`` and
``decode_step(context, cache, tokens, position) -> (logits [B, V], cache)``:
the Transformer caches each decoder layer's self-attention keys/values (and
computes the source's cross-attention keys/values once), the LSTM carries
each layer's (h, c) state. Every cache tensor has the batch (or batch x beam)
as its first axis, so beam search reorders it with one ``gather``.

Hyperparameter sets (``HPARAMS``) follow the usual tensor2tensor sizes:
``transformer_tiny`` (2 layers, 128 units), ``transformer_small`` (2 x 256),
``transformer_base`` (6 x 512, 8 heads, 2048 feed-forward: the paper's
Transformer) and ``lstm`` (4 x 1024 units, the paper's LSTM).
"""

import math

import keras
from keras import ops

__all__ = ["HPARAMS", "get_hparams", "parse_hparams", "build_model", "Transformer", "LSTMSeq2Seq"]

_COMMON = {
    "batch_size": 4096,  # padded tokens per batch and replica (tensor2tensor's meaning)
    "max_len": 64,  # training pairs longer than this (subword tokens + EOS) are dropped
    "max_decode_len": 256,
    "label_smoothing": 0.1,
    "dropout": 0.1,
    "clip_norm": 0.0,  # global gradient clipping norm; 0 = none (tensor2tensor default)
    "vocab_size": 8192,  # target size of each subword vocabulary
}
# Transformer only: "pre" (x + F(LN(x)), a final LayerNorm on each stack: trains without
# warm-up) or "post" (LN(x + F(x)), the original Transformer of Vaswani et al., 2017, and
# tensor2tensor's first versions: no final LayerNorm).
_TRANSFORMER = {"layer_norm": "pre"}
LAYER_NORMS = ("pre", "post")

HPARAMS = {
    "transformer_tiny": dict(_COMMON, **_TRANSFORMER, arch="transformer", layers=2, d_model=128, heads=4, ff=512,
                             attention_dropout=0.1, relu_dropout=0.1, tie_embeddings=True),
    "transformer_small": dict(_COMMON, **_TRANSFORMER, arch="transformer", layers=2, d_model=256, heads=4,
                              ff=1024, attention_dropout=0.1, relu_dropout=0.1,
                              tie_embeddings=True),
    "transformer_base": dict(_COMMON, **_TRANSFORMER, arch="transformer", layers=6, d_model=512, heads=8,
                             ff=2048, attention_dropout=0.1, relu_dropout=0.1,
                             tie_embeddings=True),
    "lstm": dict(_COMMON, arch="lstm", layers=4, d_model=1024, dropout=0.2,
                 label_smoothing=0.1, batch_size=4096, tie_embeddings=False),
}
# Aliases accepted in --hparams.
_ALIASES = {"hidden": "d_model", "hidden_size": "d_model", "num_layers": "layers",
            "num_heads": "heads", "filter_size": "ff", "d_ff": "ff"}


def _coerce(key, value, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"hparam {key}: expected a boolean, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def parse_hparams(text, base):
    """Applies ``key=value,key=value`` overrides to a copy of ``base``."""
    hp = dict(base)
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"--hparams: expected key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        key = _ALIASES.get(key, key)
        if key not in hp:
            raise ValueError(f"--hparams: unknown hparam {key!r}; known: {', '.join(sorted(hp))}")
        hp[key] = _coerce(key, value, hp[key])
    return hp


def get_hparams(model_name, overrides=""):
    if model_name not in HPARAMS:
        raise ValueError(f"unknown model {model_name!r}; expected one of {', '.join(HPARAMS)}")
    hp = parse_hparams(overrides, HPARAMS[model_name])
    if hp["arch"] == "transformer" and hp["d_model"] % hp["heads"]:
        raise ValueError(f"d_model={hp['d_model']} is not divisible by heads={hp['heads']}")
    if hp["arch"] == "transformer" and hp["layer_norm"] not in LAYER_NORMS:
        raise ValueError(f"hparam layer_norm={hp['layer_norm']!r}: expected one of {', '.join(LAYER_NORMS)}")
    return hp


def complete_hparams(saved):
    """Hparams saved by an earlier version (``config.json``), completed with
    the defaults of keys added since (``layer_norm`` -> ``"pre"``)."""
    hp = dict(saved)
    if hp.get("arch") == "transformer":
        for key, value in _TRANSFORMER.items():
            hp.setdefault(key, value)
    return hp


def build_model(hp, src_vocab_size, tgt_vocab_size):
    cls = Transformer if hp["arch"] == "transformer" else LSTMSeq2Seq
    model = cls(hp, src_vocab_size, tgt_vocab_size)
    # Build every weight with a tiny batch.
    one = ops.ones((1, 2), dtype="int32")
    model((one, one), training=False)
    return model


def _neg_inf(dtype):
    return -1e4 if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16") else -1e9


# ----------------------------------------------------------------- Transformer
def positional_encoding(length, depth, start=0):
    """Sinusoids of positions ``start .. start + length - 1``, [length, depth],
    float32: sin on the first half, cos on the second."""
    half = depth // 2
    pos = ops.cast(ops.arange(length) + start, "float32")[:, None]
    inv = ops.exp(ops.cast(ops.arange(half), "float32") * (-math.log(10000.0) / max(half - 1, 1)))
    angles = pos * inv[None, :]
    enc = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
    if depth % 2:
        enc = ops.pad(enc, [[0, 0], [0, 1]])
    return enc


class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention with ``heads`` heads; ``mask`` is boolean [B, 1|Tq, Tk].

    ``keys_values(memory)`` and ``attend(x, k, v, mask)`` split ``call`` in
    two so that incremental decoding can cache the projected keys and values.
    """

    def __init__(self, d_model, heads, dropout, **kwargs):
        super().__init__(**kwargs)
        self.d_model, self.heads = d_model, heads
        self.depth = d_model // heads
        init = keras.initializers.GlorotUniform()
        self.wq = keras.layers.Dense(d_model, use_bias=False, kernel_initializer=init, name="q")
        self.wk = keras.layers.Dense(d_model, use_bias=False, kernel_initializer=init, name="k")
        self.wv = keras.layers.Dense(d_model, use_bias=False, kernel_initializer=init, name="v")
        self.wo = keras.layers.Dense(d_model, use_bias=False, kernel_initializer=init, name="o")
        self.drop = keras.layers.Dropout(dropout)

    def _split(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (b, t, self.heads, self.depth)), (0, 2, 1, 3))

    def keys_values(self, memory):
        """Projected keys and values of ``memory``, each [B, heads, Tk, depth]."""
        return self._split(self.wk(memory)), self._split(self.wv(memory))

    def attend(self, x, k, v, mask=None, training=False):
        q = self._split(self.wq(x)) * (self.depth**-0.5)
        logits = ops.cast(ops.einsum("bhqd,bhkd->bhqk", q, k), "float32")
        if mask is not None:
            logits = ops.where(mask[:, None, :, :], logits, -1e9)
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        weights = self.drop(weights, training=training)
        out = ops.einsum("bhqk,bhkd->bhqd", weights, v)
        b, t = ops.shape(out)[0], ops.shape(out)[2]
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, t, self.d_model))
        return self.wo(out)

    def call(self, x, memory, mask, training=False):
        k, v = self.keys_values(memory)
        return self.attend(x, k, v, mask, training=training)


class FeedForward(keras.layers.Layer):
    def __init__(self, d_model, ff, dropout, **kwargs):
        super().__init__(**kwargs)
        self.w1 = keras.layers.Dense(ff, activation="relu", name="w1")
        self.w2 = keras.layers.Dense(d_model, name="w2")
        self.drop = keras.layers.Dropout(dropout)

    def call(self, x, training=False):
        return self.w2(self.drop(self.w1(x), training=training))


class _Sublayers(keras.layers.Layer):
    """Residual sub-layers with pre-norm ``x + Drop(F(LN(x)))`` or post-norm
    ``LN(x + Drop(F(x)))`` (``hp["layer_norm"]``)."""

    def __init__(self, hp, **kwargs):
        super().__init__(**kwargs)
        self.post = hp.get("layer_norm", "pre") == "post"
        # Subclasses create ``self.drop`` last: a layer's seed is drawn when it
        # is constructed, so the order keeps the initial weights of a seed
        # what they were before post-norm existed.

    def _in(self, ln, x):
        return x if self.post else ln(x)

    def _out(self, ln, x, y, training):
        x = x + self.drop(y, training=training)
        return ln(x) if self.post else x


class EncoderLayer(_Sublayers):
    """Self-attention then feed-forward, each a residual sub-layer."""

    def __init__(self, hp, **kwargs):
        super().__init__(hp, **kwargs)
        d = hp["d_model"]
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_attn")
        self.attn = MultiHeadAttention(d, hp["heads"], hp["attention_dropout"], name="self_attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_ff")
        self.ff = FeedForward(d, hp["ff"], hp["relu_dropout"], name="ff")
        self.drop = keras.layers.Dropout(hp["dropout"])

    def call(self, x, mask, training=False):
        h = self._in(self.ln1, x)
        x = self._out(self.ln1, x, self.attn(h, h, mask, training=training), training)
        h = self._in(self.ln2, x)
        return self._out(self.ln2, x, self.ff(h, training=training), training)


class DecoderLayer(_Sublayers):
    """Causal self-attention, cross-attention, feed-forward.

    ``step`` runs one position given the cached self-attention keys/values of
    the earlier positions (and the cross-attention keys/values of the source,
    computed once); it returns the new position's output and the grown cache.
    """

    def __init__(self, hp, **kwargs):
        super().__init__(hp, **kwargs)
        d = hp["d_model"]
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_self")
        self.self_attn = MultiHeadAttention(d, hp["heads"], hp["attention_dropout"], name="self_attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_cross")
        self.cross_attn = MultiHeadAttention(d, hp["heads"], hp["attention_dropout"], name="cross_attention")
        self.ln3 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_ff")
        self.ff = FeedForward(d, hp["ff"], hp["relu_dropout"], name="ff")
        self.drop = keras.layers.Dropout(hp["dropout"])

    def call(self, x, memory, self_mask, cross_mask, training=False):
        h = self._in(self.ln1, x)
        x = self._out(self.ln1, x, self.self_attn(h, h, self_mask, training=training), training)
        h = self._in(self.ln2, x)
        x = self._out(self.ln2, x, self.cross_attn(h, memory, cross_mask, training=training), training)
        h = self._in(self.ln3, x)
        return self._out(self.ln3, x, self.ff(h, training=training), training)

    def step(self, x, cache_k, cache_v, cross_k, cross_v, cross_mask):
        """x [B, 1, d]; cache_k/v [B, heads, t, depth] -> (out [B, 1, d], k, v with t + 1)."""
        h = self._in(self.ln1, x)
        k, v = self.self_attn.keys_values(h)
        k = ops.concatenate([cache_k, k], axis=2)
        v = ops.concatenate([cache_v, v], axis=2)
        x = self._out(self.ln1, x, self.self_attn.attend(h, k, v), False)
        h = self._in(self.ln2, x)
        x = self._out(self.ln2, x, self.cross_attn.attend(h, cross_k, cross_v, cross_mask), False)
        h = self._in(self.ln3, x)
        return self._out(self.ln3, x, self.ff(h), False), k, v


class Transformer(keras.Model):
    """Encoder-decoder Transformer (sinusoidal positions, tied target softmax).

    ``hp["layer_norm"]``: ``"pre"`` (default; a final LayerNorm closes each
    stack) or ``"post"`` (the original Transformer; no final LayerNorm).
    """

    def __init__(self, hp, src_vocab_size, tgt_vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.hp = dict(hp)
        d = hp["d_model"]
        init = keras.initializers.RandomNormal(stddev=d**-0.5)
        self.src_embed = keras.layers.Embedding(src_vocab_size, d, embeddings_initializer=init, name="src_embedding")
        self.tgt_embed = keras.layers.Embedding(tgt_vocab_size, d, embeddings_initializer=init, name="tgt_embedding")
        self.enc_layers = [EncoderLayer(hp, name=f"encoder_{i}") for i in range(hp["layers"])]
        self.dec_layers = [DecoderLayer(hp, name=f"decoder_{i}") for i in range(hp["layers"])]
        if hp.get("layer_norm", "pre") == "post":
            self.enc_norm = self.dec_norm = None
        else:
            self.enc_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")
            self.dec_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        self.drop = keras.layers.Dropout(hp["dropout"])
        self.out_proj = None if hp["tie_embeddings"] else keras.layers.Dense(tgt_vocab_size, name="softmax")

    def _embed(self, layer, ids, training, start=0):
        x = layer(ids) * ops.cast(self.hp["d_model"] ** 0.5, layer.compute_dtype)
        pe = positional_encoding(ops.shape(ids)[1], self.hp["d_model"], start)
        x = x + ops.cast(pe, x.dtype)[None]
        return self.drop(x, training=training)

    def encode(self, src, training=False):
        valid = ops.not_equal(src, 0)
        mask = valid[:, None, :]  # [B, 1, Ts]
        x = self._embed(self.src_embed, src, training)
        for layer in self.enc_layers:
            x = layer(x, mask, training=training)
        if self.enc_norm is not None:
            x = self.enc_norm(x)
        return {"memory": x, "src_valid": valid}

    def _logits(self, x):
        if self.dec_norm is not None:
            x = self.dec_norm(x)
        if self.out_proj is None:
            emb = ops.cast(self.tgt_embed.embeddings, x.dtype)
            logits = ops.einsum("btd,vd->btv", x, emb)
        else:
            logits = self.out_proj(x)
        return ops.cast(logits, "float32")

    def decode(self, memory, tgt_in, training=False):
        t = ops.shape(tgt_in)[1]
        causal = ops.tril(ops.ones((t, t), dtype="bool"))[None]  # [1, Tt, Tt]
        cross = memory["src_valid"][:, None, :]
        x = self._embed(self.tgt_embed, tgt_in, training)
        for layer in self.dec_layers:
            x = layer(x, memory["memory"], causal, cross, training=training)
        return self._logits(x)

    # ------------------------------------------------ incremental decoding
    def start_decoding(self, memory):
        """(context, cache) for ``decode_step``: the context holds each layer's
        cross-attention keys/values of the source (computed once), the cache
        each layer's self-attention keys/values, empty at first."""
        context = {"cross_mask": memory["src_valid"][:, None, :]}
        cache = {}
        batch = ops.shape(memory["memory"])[0]
        dtype = self.tgt_embed.compute_dtype
        for i, layer in enumerate(self.dec_layers):
            context[f"k{i}"], context[f"v{i}"] = layer.cross_attn.keys_values(memory["memory"])
            empty = ops.zeros((batch, layer.self_attn.heads, 0, layer.self_attn.depth), dtype=dtype)
            cache[f"k{i}"], cache[f"v{i}"] = empty, empty
        return context, cache

    def decode_step(self, context, cache, tokens, position):
        """Logits [B, V] (float32) of the token after ``tokens`` [B] at ``position``, and the new cache."""
        x = self._embed(self.tgt_embed, tokens[:, None], False, start=position)
        new = {}
        for i, layer in enumerate(self.dec_layers):
            x, new[f"k{i}"], new[f"v{i}"] = layer.step(
                x, cache[f"k{i}"], cache[f"v{i}"], context[f"k{i}"], context[f"v{i}"],
                context["cross_mask"])
        return self._logits(x)[:, 0], new

    def call(self, inputs, training=False):
        src, tgt_in = inputs
        return self.decode(self.encode(src, training=training), tgt_in, training=training)


# ------------------------------------------------------------------------ LSTM
class LSTMSeq2Seq(keras.Model):
    """Stacked LSTM encoder-decoder with Luong ("general") attention.

    The encoder's layer-i final state initialises the decoder's layer i. The
    attention reads the top decoder state ``h_t``: ``a = softmax(h_t W H^T)``,
    ``c_t = a H``, ``o_t = tanh(W_c [c_t; h_t])``, logits ``= W_o o_t``.
    Dropout is applied between layers and on ``o_t``.
    """

    def __init__(self, hp, src_vocab_size, tgt_vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.hp = dict(hp)
        d = hp["d_model"]
        self.src_embed = keras.layers.Embedding(src_vocab_size, d, name="src_embedding")
        self.tgt_embed = keras.layers.Embedding(tgt_vocab_size, d, name="tgt_embedding")
        self.enc_lstms = [keras.layers.LSTM(d, return_sequences=True, return_state=True, name=f"encoder_lstm_{i}")
                          for i in range(hp["layers"])]
        self.dec_lstms = [keras.layers.LSTM(d, return_sequences=True, return_state=True, name=f"decoder_lstm_{i}")
                          for i in range(hp["layers"])]
        self.attn_w = keras.layers.Dense(d, use_bias=False, name="attention_w")
        self.attn_out = keras.layers.Dense(d, activation="tanh", use_bias=False, name="attention_out")
        self.drop = keras.layers.Dropout(hp["dropout"])
        self.softmax = keras.layers.Dense(tgt_vocab_size, name="softmax")

    def encode(self, src, training=False):
        valid = ops.not_equal(src, 0)
        x = self.drop(self.src_embed(src), training=training)
        memory = {"src_valid": valid}
        for i, lstm in enumerate(self.enc_lstms):
            x, h, c = lstm(x, mask=valid, training=training)
            memory[f"h{i}"], memory[f"c{i}"] = h, c
            x = self.drop(x, training=training)
        memory["memory"] = x
        return memory

    def _attention_output(self, memory, x, training):
        enc = memory["memory"]
        scores = ops.cast(ops.einsum("btd,bsd->bts", self.attn_w(x), enc), "float32")
        scores = ops.where(memory["src_valid"][:, None, :], scores, -1e9)
        weights = ops.cast(ops.softmax(scores, axis=-1), enc.dtype)
        context = ops.einsum("bts,bsd->btd", weights, enc)
        out = self.attn_out(ops.concatenate([context, x], axis=-1))
        out = self.drop(out, training=training)
        return ops.cast(self.softmax(out), "float32")

    def decode(self, memory, tgt_in, training=False):
        x = self.drop(self.tgt_embed(tgt_in), training=training)
        for i, lstm in enumerate(self.dec_lstms):
            x, _, _ = lstm(x, initial_state=[memory[f"h{i}"], memory[f"c{i}"]], training=training)
            x = self.drop(x, training=training)
        return self._attention_output(memory, x, training)

    # ------------------------------------------------ incremental decoding
    def start_decoding(self, memory):
        """(context, cache): the cache is each decoder layer's (h, c), starting
        from the encoder's final states."""
        context = {"memory": memory["memory"], "src_valid": memory["src_valid"]}
        cache = {}
        for i in range(len(self.dec_lstms)):
            cache[f"h{i}"], cache[f"c{i}"] = memory[f"h{i}"], memory[f"c{i}"]
        return context, cache

    def decode_step(self, context, cache, tokens, position):
        """Logits [B, V] of the token after ``tokens`` [B], carrying each layer's state one step."""
        del position  # the state carries it
        x = self.tgt_embed(tokens)
        new = {}
        for i, lstm in enumerate(self.dec_lstms):
            x, (new[f"h{i}"], new[f"c{i}"]) = lstm.cell(x, [cache[f"h{i}"], cache[f"c{i}"]], training=False)
        return self._attention_output(context, x[:, None], False)[:, 0], new

    def call(self, inputs, training=False):
        src, tgt_in = inputs
        return self.decode(self.encode(src, training=training), tgt_in, training=training)
