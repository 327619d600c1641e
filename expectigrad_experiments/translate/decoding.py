"""Greedy and beam-search decoding, and BLEU (sacrebleu).

Decoding runs as one ``tf.function`` per batch: the encoder once, then a
``while`` loop that appends one token per step, until every sentence has
produced end-of-sentence or the length limit
``min(2 * source_length + 10, max_decode_len)`` is reached. By default each
step runs the decoder on the new position only, with the model's cache
(Transformer: each layer's self-attention keys/values, LSTM: each layer's
state; see models.py); ``cached=False`` re-runs it on the whole prefix.
Beam search reorders the cache with the surviving beams and ranks the final
beams with tensor2tensor's length penalty ``((5 + length) / 6) ** alpha``.
"""

import numpy as np
import tensorflow as tf

__all__ = ["Decoder", "bleu"]


def bleu(hypotheses, references):
    """(cased, uncased) corpus BLEU of detokenised strings, sacrebleu's 13a tokeniser."""
    import sacrebleu

    cased = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    uncased = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True)
    return float(cased.score), float(uncased.score)


def _tile(x, k):
    """[B, ...] -> [B * k, ...], each row repeated k times consecutively."""
    return tf.repeat(x, k, axis=0)


def _invariant(t):
    """The loop shape invariant of a cache tensor: the batch and time axes vary."""
    return tf.TensorShape([None] * t.shape.rank)


class Decoder:
    """Decodes batches of source ids with ``model`` (see models.py's interface).

    ``cached=True`` (default) decodes incrementally (``start_decoding`` /
    ``decode_step``: one new position per step); ``cached=False`` re-runs the
    decoder on the whole prefix every step (the reference the cached path is
    tested against).
    """

    def __init__(self, model, bos_id, eos_id, max_decode_len=256, beam_size=1, alpha=0.6, cached=True):
        if int(beam_size) < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size!r}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha (length penalty) must be a finite number >= 0, got {alpha!r}")
        if int(max_decode_len) < 1:
            raise ValueError(f"max_decode_len must be >= 1, got {max_decode_len!r}")
        self.model = model
        self.bos, self.eos = int(bos_id), int(eos_id)
        self.max_decode_len = int(max_decode_len)
        self.beam_size = int(beam_size)
        self.alpha = float(alpha)
        self.cached = bool(cached)
        sig = [tf.TensorSpec([None, None], tf.int32)]
        self._fn = tf.function(self.decode_batch, input_signature=sig)

    def decode_batch(self, src):
        """[B, Ts] int32 source ids (0 = padding) -> [B, T] int32 output ids (EOS then 0s)."""
        return self._greedy(src) if self.beam_size <= 1 else self._beam(src)

    def _limit(self, src):
        src_len = tf.reduce_max(tf.reduce_sum(tf.cast(src > 0, tf.int32), axis=1))
        return tf.minimum(2 * src_len + 10, self.max_decode_len)

    def _start(self, memory):
        """(context, cache) for ``_next_logits``; the cache is empty when not cached."""
        if self.cached:
            return self.model.start_decoding(memory)
        return memory, {}

    def _next_logits(self, context, cache, prefix, i):
        """Logits [rows, V] of the token after ``prefix`` [rows, i + 1], and the new cache."""
        if self.cached:
            return self.model.decode_step(context, cache, prefix[:, -1], i)
        return self.model.decode(context, prefix, training=False)[:, -1], cache

    def _greedy(self, src):
        memory = self.model.encode(src, training=False)
        batch = tf.shape(src)[0]
        context, cache = self._start(memory)
        prefix = tf.fill([batch, 1], self.bos)
        finished = tf.zeros([batch], tf.bool)
        limit = self._limit(src)

        def cond(i, prefix, finished, cache):
            return tf.logical_and(i < limit, tf.logical_not(tf.reduce_all(finished)))

        def body(i, prefix, finished, cache):
            logits, cache = self._next_logits(context, cache, prefix, i)
            nxt = tf.argmax(logits, axis=-1, output_type=tf.int32)
            nxt = tf.where(finished, tf.zeros_like(nxt), nxt)
            finished = finished | tf.equal(nxt, self.eos)
            prefix = tf.concat([prefix, nxt[:, None]], axis=1)
            return i + 1, prefix, finished, cache

        _, prefix, _, _ = tf.while_loop(
            cond, body, (tf.constant(0), prefix, finished, cache),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]),
                              tf.TensorShape([None]), tf.nest.map_structure(_invariant, cache)))
        return prefix[:, 1:]

    def _beam(self, src):
        k = self.beam_size
        memory = self.model.encode(src, training=False)
        memory = tf.nest.map_structure(lambda t: _tile(t, k), memory)
        context, cache = self._start(memory)
        batch = tf.shape(src)[0]
        prefix = tf.fill([batch * k, 1], self.bos)
        # Only the first beam is live at the start.
        scores = tf.tile(tf.constant([[0.0] + [-1e9] * (k - 1)]), [batch, 1])  # [B, K]
        finished = tf.zeros([batch, k], tf.bool)
        lengths = tf.zeros([batch, k], tf.float32)
        limit = self._limit(src)

        def cond(i, prefix, scores, finished, lengths, cache):
            return tf.logical_and(i < limit, tf.logical_not(tf.reduce_all(finished)))

        def body(i, prefix, scores, finished, lengths, cache):
            logits, cache = self._next_logits(context, cache, prefix, i)
            logp = tf.nn.log_softmax(logits, axis=-1)
            vocab = tf.shape(logp)[-1]
            logp = tf.reshape(logp, [batch, k, vocab])
            # A finished beam can only be extended by padding, at no cost.
            pad_only = tf.concat(
                [tf.zeros([batch, k, 1]), tf.fill([batch, k, vocab - 1], -1e9)], axis=-1
            )
            logp = tf.where(finished[:, :, None], pad_only, logp)
            cand = tf.reshape(scores[:, :, None] + logp, [batch, k * vocab])
            scores, flat = tf.math.top_k(cand, k=k)
            beam_idx = flat // vocab
            token = flat % vocab
            rows = tf.reshape(beam_idx + tf.range(batch)[:, None] * k, [-1])  # rows of prefix
            prefix = tf.gather(prefix, rows)
            prefix = tf.concat([prefix, tf.reshape(token, [-1, 1])], axis=1)
            cache = tf.nest.map_structure(lambda t: tf.gather(t, rows), cache)
            was_finished = tf.gather(finished, beam_idx, batch_dims=1)
            lengths = tf.gather(lengths, beam_idx, batch_dims=1) + tf.cast(~was_finished, tf.float32)
            finished = was_finished | tf.equal(token, self.eos)
            return i + 1, prefix, scores, finished, lengths, cache

        _, prefix, scores, _, lengths, _ = tf.while_loop(
            cond, body, (tf.constant(0), prefix, scores, finished, lengths, cache),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]),
                              tf.TensorShape([None, k]), tf.TensorShape([None, k]),
                              tf.TensorShape([None, k]), tf.nest.map_structure(_invariant, cache)))
        # tensor2tensor's length penalty ((5 + len) / 6) ** alpha.
        penalty = tf.pow((5.0 + lengths) / 6.0, self.alpha)
        best = tf.argmax(scores / penalty, axis=1, output_type=tf.int32)
        rows = best + tf.range(batch) * k
        return tf.gather(prefix, rows)[:, 1:]

    def strip(self, row):
        """Ids of one output row up to (without) EOS, padding removed."""
        seq = []
        for t in row:
            if t == self.eos:
                break
            if t:
                seq.append(int(t))
        return seq

    def decode_ids(self, src_arrays, batch_size=64):
        """Decodes a list of 1-D id arrays, batched by length; returns a list of
        id lists (EOS and padding removed), in the input order."""
        from .data import pad_batch

        order = np.argsort([len(s) for s in src_arrays], kind="stable")
        out = [None] * len(src_arrays)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids = self._fn(tf.constant(pad_batch([src_arrays[j] for j in idx]))).numpy()
            for row, j in zip(ids, idx):
                out[j] = self.strip(row)
        return out
