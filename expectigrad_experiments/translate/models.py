"""Sequence-to-sequence models (Keras 3): a Transformer and an attentional LSTM.

Both models take ``(source_ids, decoder_input_ids)`` (int32, ``0`` = padding)
and return float32 logits ``[batch, target_length, vocab]``. For decoding
they expose ``encode(src) -> memory`` (a dict of tensors) and
``decode(memory, prefix) -> logits`` (the whole prefix is recomputed each
step: no cache, simple and exact).

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

HPARAMS = {
    "transformer_tiny": dict(_COMMON, arch="transformer", layers=2, d_model=128, heads=4, ff=512,
                             attention_dropout=0.1, relu_dropout=0.1, tie_embeddings=True),
    "transformer_small": dict(_COMMON, arch="transformer", layers=2, d_model=256, heads=4,
                              ff=1024, attention_dropout=0.1, relu_dropout=0.1,
                              tie_embeddings=True),
    "transformer_base": dict(_COMMON, arch="transformer", layers=6, d_model=512, heads=8,
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
def positional_encoding(length, depth):
    """Sinusoids, [length, depth], float32: sin on the first half, cos on the second."""
    half = depth // 2
    pos = ops.cast(ops.arange(length), "float32")[:, None]
    inv = ops.exp(ops.cast(ops.arange(half), "float32") * (-math.log(10000.0) / max(half - 1, 1)))
    angles = pos * inv[None, :]
    enc = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
    if depth % 2:
        enc = ops.pad(enc, [[0, 0], [0, 1]])
    return enc


class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention with ``heads`` heads; ``mask`` is boolean [B, 1|Tq, Tk]."""

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

    def call(self, x, memory, mask, training=False):
        q = self._split(self.wq(x)) * (self.depth**-0.5)
        k = self._split(self.wk(memory))
        v = self._split(self.wv(memory))
        logits = ops.cast(ops.einsum("bhqd,bhkd->bhqk", q, k), "float32")
        logits = ops.where(mask[:, None, :, :], logits, -1e9)
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        weights = self.drop(weights, training=training)
        out = ops.einsum("bhqk,bhkd->bhqd", weights, v)
        b, t = ops.shape(out)[0], ops.shape(out)[2]
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, t, self.d_model))
        return self.wo(out)


class FeedForward(keras.layers.Layer):
    def __init__(self, d_model, ff, dropout, **kwargs):
        super().__init__(**kwargs)
        self.w1 = keras.layers.Dense(ff, activation="relu", name="w1")
        self.w2 = keras.layers.Dense(d_model, name="w2")
        self.drop = keras.layers.Dropout(dropout)

    def call(self, x, training=False):
        return self.w2(self.drop(self.w1(x), training=training))


class EncoderLayer(keras.layers.Layer):
    """Pre-norm: x + Drop(SelfAttn(LN(x))); x + Drop(FF(LN(x)))."""

    def __init__(self, hp, **kwargs):
        super().__init__(**kwargs)
        d = hp["d_model"]
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_attn")
        self.attn = MultiHeadAttention(d, hp["heads"], hp["attention_dropout"], name="self_attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_ff")
        self.ff = FeedForward(d, hp["ff"], hp["relu_dropout"], name="ff")
        self.drop = keras.layers.Dropout(hp["dropout"])

    def call(self, x, mask, training=False):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, mask, training=training), training=training)
        return x + self.drop(self.ff(self.ln2(x), training=training), training=training)


class DecoderLayer(keras.layers.Layer):
    def __init__(self, hp, **kwargs):
        super().__init__(**kwargs)
        d = hp["d_model"]
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_self")
        self.self_attn = MultiHeadAttention(d, hp["heads"], hp["attention_dropout"], name="self_attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_cross")
        self.cross_attn = MultiHeadAttention(d, hp["heads"], hp["attention_dropout"], name="cross_attention")
        self.ln3 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_ff")
        self.ff = FeedForward(d, hp["ff"], hp["relu_dropout"], name="ff")
        self.drop = keras.layers.Dropout(hp["dropout"])

    def call(self, x, memory, self_mask, cross_mask, training=False):
        h = self.ln1(x)
        x = x + self.drop(self.self_attn(h, h, self_mask, training=training), training=training)
        h = self.ln2(x)
        x = x + self.drop(self.cross_attn(h, memory, cross_mask, training=training), training=training)
        return x + self.drop(self.ff(self.ln3(x), training=training), training=training)


class Transformer(keras.Model):
    """Encoder-decoder Transformer (pre-norm, sinusoidal positions, tied target softmax)."""

    def __init__(self, hp, src_vocab_size, tgt_vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.hp = dict(hp)
        d = hp["d_model"]
        init = keras.initializers.RandomNormal(stddev=d**-0.5)
        self.src_embed = keras.layers.Embedding(src_vocab_size, d, embeddings_initializer=init, name="src_embedding")
        self.tgt_embed = keras.layers.Embedding(tgt_vocab_size, d, embeddings_initializer=init, name="tgt_embedding")
        self.enc_layers = [EncoderLayer(hp, name=f"encoder_{i}") for i in range(hp["layers"])]
        self.dec_layers = [DecoderLayer(hp, name=f"decoder_{i}") for i in range(hp["layers"])]
        self.enc_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")
        self.dec_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        self.drop = keras.layers.Dropout(hp["dropout"])
        self.out_proj = None if hp["tie_embeddings"] else keras.layers.Dense(tgt_vocab_size, name="softmax")

    def _embed(self, layer, ids, training):
        x = layer(ids) * ops.cast(self.hp["d_model"] ** 0.5, layer.compute_dtype)
        pe = positional_encoding(ops.shape(ids)[1], self.hp["d_model"])
        x = x + ops.cast(pe, x.dtype)[None]
        return self.drop(x, training=training)

    def encode(self, src, training=False):
        valid = ops.not_equal(src, 0)
        mask = valid[:, None, :]  # [B, 1, Ts]
        x = self._embed(self.src_embed, src, training)
        for layer in self.enc_layers:
            x = layer(x, mask, training=training)
        return {"memory": self.enc_norm(x), "src_valid": valid}

    def decode(self, memory, tgt_in, training=False):
        t = ops.shape(tgt_in)[1]
        causal = ops.tril(ops.ones((t, t), dtype="bool"))[None]  # [1, Tt, Tt]
        cross = memory["src_valid"][:, None, :]
        x = self._embed(self.tgt_embed, tgt_in, training)
        for layer in self.dec_layers:
            x = layer(x, memory["memory"], causal, cross, training=training)
        x = self.dec_norm(x)
        if self.out_proj is None:
            emb = ops.cast(self.tgt_embed.embeddings, x.dtype)
            logits = ops.einsum("btd,vd->btv", x, emb)
        else:
            logits = self.out_proj(x)
        return ops.cast(logits, "float32")

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

    def decode(self, memory, tgt_in, training=False):
        x = self.drop(self.tgt_embed(tgt_in), training=training)
        for i, lstm in enumerate(self.dec_lstms):
            x, _, _ = lstm(x, initial_state=[memory[f"h{i}"], memory[f"c{i}"]], training=training)
            x = self.drop(x, training=training)
        enc = memory["memory"]
        scores = ops.cast(ops.einsum("btd,bsd->bts", self.attn_w(x), enc), "float32")
        scores = ops.where(memory["src_valid"][:, None, :], scores, -1e9)
        weights = ops.cast(ops.softmax(scores, axis=-1), enc.dtype)
        context = ops.einsum("bts,bsd->btd", weights, enc)
        out = self.attn_out(ops.concatenate([context, x], axis=-1))
        out = self.drop(out, training=training)
        return ops.cast(self.softmax(out), "float32")

    def call(self, inputs, training=False):
        src, tgt_in = inputs
        return self.decode(self.encode(src, training=training), tgt_in, training=training)
