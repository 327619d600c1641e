"""Greedy and beam-search decoding, and BLEU (sacrebleu).

Decoding runs as one ``tf.function`` per batch: the encoder once, then a
``while`` loop that re-runs the decoder on the whole prefix (no cache) and
appends one token, until every sentence has produced end-of-sentence or the
length limit ``min(2 * source_length + 10, max_decode_len)`` is reached.
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


class Decoder:
    """Decodes batches of source ids with ``model`` (see models.py's interface)."""

    def __init__(self, model, bos_id, eos_id, max_decode_len=256, beam_size=1, alpha=0.6):
        self.model = model
        self.bos, self.eos = int(bos_id), int(eos_id)
        self.max_decode_len = int(max_decode_len)
        self.beam_size = int(beam_size)
        self.alpha = float(alpha)
        sig = [tf.TensorSpec([None, None], tf.int32)]
        fn = self._greedy if self.beam_size <= 1 else self._beam
        self._fn = tf.function(fn, input_signature=sig)

    def _limit(self, src):
        src_len = tf.reduce_max(tf.reduce_sum(tf.cast(src > 0, tf.int32), axis=1))
        return tf.minimum(2 * src_len + 10, self.max_decode_len)

    def _greedy(self, src):
        memory = self.model.encode(src, training=False)
        batch = tf.shape(src)[0]
        prefix = tf.fill([batch, 1], self.bos)
        finished = tf.zeros([batch], tf.bool)
        limit = self._limit(src)
        i = tf.constant(0)
        while i < limit and not tf.reduce_all(finished):
            tf.autograph.experimental.set_loop_options(
                shape_invariants=[(prefix, tf.TensorShape([None, None]))]
            )
            logits = self.model.decode(memory, prefix, training=False)[:, -1]
            nxt = tf.argmax(logits, axis=-1, output_type=tf.int32)
            nxt = tf.where(finished, tf.zeros_like(nxt), nxt)
            finished = finished | tf.equal(nxt, self.eos)
            prefix = tf.concat([prefix, nxt[:, None]], axis=1)
            i += 1
        return prefix[:, 1:]

    def _beam(self, src):
        k = self.beam_size
        memory = self.model.encode(src, training=False)
        memory = tf.nest.map_structure(lambda t: _tile(t, k), memory)
        batch = tf.shape(src)[0]
        prefix = tf.fill([batch * k, 1], self.bos)
        # Only the first beam is live at the start.
        scores = tf.tile(tf.constant([[0.0] + [-1e9] * (k - 1)]), [batch, 1])  # [B, K]
        finished = tf.zeros([batch, k], tf.bool)
        lengths = tf.zeros([batch, k], tf.float32)
        limit = self._limit(src)
        i = tf.constant(0)
        while i < limit and not tf.reduce_all(finished):
            tf.autograph.experimental.set_loop_options(
                shape_invariants=[(prefix, tf.TensorShape([None, None]))]
            )
            logits = self.model.decode(memory, prefix, training=False)[:, -1]
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
            gather = beam_idx + tf.range(batch)[:, None] * k  # rows of prefix
            prefix = tf.gather(prefix, tf.reshape(gather, [-1]))
            prefix = tf.concat([prefix, tf.reshape(token, [-1, 1])], axis=1)
            was_finished = tf.gather(finished, beam_idx, batch_dims=1)
            lengths = tf.gather(lengths, beam_idx, batch_dims=1) + tf.cast(~was_finished, tf.float32)
            finished = was_finished | tf.equal(token, self.eos)
            i += 1
        # tensor2tensor's length penalty ((5 + len) / 6) ** alpha.
        penalty = tf.pow((5.0 + lengths) / 6.0, self.alpha)
        best = tf.argmax(scores / penalty, axis=1, output_type=tf.int32)
        rows = best + tf.range(batch) * k
        return tf.gather(prefix, rows)[:, 1:]

    def decode_ids(self, src_arrays, batch_size=64):
        """Decodes a list of 1-D id arrays; returns a list of id lists (EOS and padding removed)."""
        from .data import pad_batch

        order = np.argsort([len(s) for s in src_arrays], kind="stable")
        out = [None] * len(src_arrays)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids = self._fn(tf.constant(pad_batch([src_arrays[j] for j in idx]))).numpy()
            for row, j in zip(ids, idx):
                seq = []
                for t in row:
                    if t == self.eos:
                        break
                    if t:
                        seq.append(int(t))
                out[j] = seq
        return out
