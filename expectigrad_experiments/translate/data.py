"""Parallel data: loading (synthetic, text files, TFDS), subword vocabularies, batching.

Token ids: ``0`` is padding, ``1 .. V-1`` are the subword ids of a
``SubwordTextEncoder`` of size ``V``, ``V`` is end-of-sentence and ``V + 1``
is the decoder's start symbol; a model's vocabulary therefore has ``V + 2``
entries (see ``Vocab``).

Batching is done in numpy and is a pure function of ``(seed, epoch)``: the
examples are bucketed by length, batched up to ``batch_tokens`` padded tokens
per batch (tensor2tensor's meaning of ``batch_size``) and the batches are
shuffled. Batch ``k`` of the whole run is therefore known without reading the
ones before it, which is what makes a resumed run see exactly the batches an
uninterrupted one would have seen.
"""

import os

import numpy as np

from . import synthetic

__all__ = [
    "Vocab",
    "load_problem",
    "build_or_load_vocab",
    "encode_pairs",
    "BatchSchedule",
    "pad_batch",
    "DEFAULT_BOUNDARIES",
]

DEFAULT_BOUNDARIES = (8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)


# --------------------------------------------------------------------- loading
def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def _read_parallel(src_path, tgt_path):
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
            "parallel files must have one sentence per line, aligned"
        )
    return [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]


def _tfds_pairs(name, split, data_dir, reverse, limit):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    keys = builder.info.supervised_keys
    if not keys:
        langs = getattr(builder.info.features, "languages", None)
        if not langs or len(langs) != 2:
            raise ValueError(f"{name}: not a two-language translation dataset")
        keys = tuple(langs)
    src_key, tgt_key = (keys[1], keys[0]) if reverse else (keys[0], keys[1])
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except AssertionError as e:  # tfds: "Dataset ... not found in data_dir"
        raise SystemExit(
            f"{name} split {split!r} is not prepared in --data-dir {data_dir!r} ({e}). "
            f"Prepare it where it can be downloaded (`tfds build {name} --data_dir DIR`) "
            "and copy DIR here; this script never downloads."
        ) from e
    if limit:
        ds = ds.take(limit)
    pairs = []
    for ex in tfds.as_numpy(ds):
        s = ex[src_key].decode("utf-8").strip()
        t = ex[tgt_key].decode("utf-8").strip()
        if s and t:
            pairs.append((s, t))
    return pairs, (src_key, tgt_key)


def load_problem(args):
    """(train_pairs, eval_pairs, info) for the problem the arguments name.

    ``args`` needs: problem, data_dir, train_split, eval_split, reverse,
    train_src/train_tgt/eval_src/eval_tgt, max_train_examples,
    max_eval_examples, seed, synthetic_train_size, synthetic_eval_size,
    output_dir.
    """
    files = [args.train_src, args.train_tgt, args.eval_src, args.eval_tgt]
    if any(files):
        if not all(files):
            raise ValueError("--train-src, --train-tgt, --eval-src and --eval-tgt go together")
        train = _read_parallel(args.train_src, args.train_tgt)
        evals = _read_parallel(args.eval_src, args.eval_tgt)
        if args.reverse:
            train = [(t, s) for s, t in train]
            evals = [(t, s) for s, t in evals]
        info = {"problem": "text_files", "train": [args.train_src, args.train_tgt],
                "eval": [args.eval_src, args.eval_tgt]}
    elif args.problem == "synthetic":
        corpus = synthetic.generate_corpus(
            args.seed, args.synthetic_train_size, args.synthetic_eval_size
        )
        train, evals = corpus.train, corpus.eval
        info = {"problem": "synthetic", "seed": args.seed,
                "train_size": len(train), "eval_size": len(evals)}
        if args.output_dir:
            _write_corpus(os.path.join(args.output_dir, "data"), train, evals)
    else:
        train, keys = _tfds_pairs(
            args.problem, args.train_split, args.data_dir, args.reverse, args.max_train_examples
        )
        evals, _ = _tfds_pairs(
            args.problem, args.eval_split, args.data_dir, args.reverse, args.max_eval_examples
        )
        info = {"problem": args.problem, "data_dir": args.data_dir, "source": keys[0],
                "target": keys[1], "train_split": args.train_split,
                "eval_split": args.eval_split}
    if args.max_train_examples:
        train = train[: args.max_train_examples]
    if args.max_eval_examples:
        evals = evals[: args.max_eval_examples]
    if not train or not evals:
        raise ValueError(f"empty data: {len(train)} training and {len(evals)} evaluation pairs")
    info.update(train_pairs=len(train), eval_pairs=len(evals))
    return train, evals, info


def _write_corpus(folder, train, evals):
    """Writes the synthetic corpus as text files (for inspection and --train-src reuse)."""
    if os.path.exists(os.path.join(folder, "eval.tgt")):
        return
    os.makedirs(folder, exist_ok=True)
    for split, pairs in (("train", train), ("eval", evals)):
        for side, idx in (("src", 0), ("tgt", 1)):
            tmp = os.path.join(folder, f"{split}.{side}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(p[idx] + "\n" for p in pairs)
            os.replace(tmp, os.path.join(folder, f"{split}.{side}"))


# ----------------------------------------------------------------- vocabulary
class Vocab:
    """A ``SubwordTextEncoder`` plus end-of-sentence and start symbols."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.eos_id = encoder.vocab_size
        self.bos_id = encoder.vocab_size + 1
        self.size = encoder.vocab_size + 2

    def encode(self, text):
        return self.encoder.encode(text) + [self.eos_id]

    def decode(self, ids):
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if 0 < i < self.eos_id:
                out.append(i)
        return self.encoder.decode(out)


def build_or_load_vocab(path_prefix, texts, target_size, max_subword_length=20):
    """Loads ``path_prefix.subwords`` or builds it from ``texts`` and saves it."""
    import tensorflow_datasets as tfds

    enc_cls = tfds.deprecated.text.SubwordTextEncoder
    if os.path.exists(path_prefix + ".subwords"):
        return Vocab(enc_cls.load_from_file(path_prefix))
    encoder = enc_cls.build_from_corpus(
        (t for t in texts), target_vocab_size=target_size, max_subword_length=max_subword_length
    )
    os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
    # Write to a temporary prefix then rename: a half-written vocabulary
    # would silently change every id on the next run.
    tmp = path_prefix + ".tmp"
    encoder.save_to_file(tmp)
    os.replace(tmp + ".subwords", path_prefix + ".subwords")
    return Vocab(encoder)


def encode_pairs(pairs, src_vocab, tgt_vocab):
    src = [np.asarray(src_vocab.encode(s), dtype=np.int32) for s, _ in pairs]
    tgt = [np.asarray(tgt_vocab.encode(t), dtype=np.int32) for _, t in pairs]
    return src, tgt


# ------------------------------------------------------------------- batching
def pad_batch(seqs, length=None):
    length = length or max(len(s) for s in seqs)
    out = np.zeros((len(seqs), length), dtype=np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s[:length]
    return out


class BatchSchedule:
    """Deterministic, resumable bucketed batches of (source, target) id arrays.

    Examples longer than ``max_len`` tokens (either side) are dropped.
    ``batch(k)`` is the k-th batch of the run (0-based) over endlessly
    repeated epochs; epoch ``e`` is shuffled with ``(seed, e)``.
    """

    def __init__(self, src, tgt, batch_tokens, max_len, seed, boundaries=DEFAULT_BOUNDARIES):
        keep = [i for i in range(len(src)) if len(src[i]) <= max_len and len(tgt[i]) <= max_len]
        if not keep:
            raise ValueError(f"no training pair has both sides within max_len={max_len} tokens")
        self.src = [src[i] for i in keep]
        self.tgt = [tgt[i] for i in keep]
        self.dropped = len(src) - len(keep)
        self.batch_tokens = int(batch_tokens)
        self.seed = int(seed)
        bounds = sorted({b for b in boundaries if b < max_len} | {max_len})
        self.boundaries = np.asarray(bounds)
        lengths = np.asarray([max(len(s), len(t)) for s, t in zip(self.src, self.tgt)])
        self.bucket = np.searchsorted(self.boundaries, lengths, side="left")
        self._epochs = {}

    def __len__(self):
        return len(self.src)

    def epoch_batches(self, epoch):
        """List of index arrays, the batches of ``epoch`` in order."""
        cached = self._epochs.get(epoch)
        if cached is not None:
            return cached
        rng = np.random.default_rng([self.seed, 303, epoch])
        order = rng.permutation(len(self.src))
        batches = []
        for b, bound in enumerate(self.boundaries):
            members = order[self.bucket[order] == b]
            size = max(1, self.batch_tokens // int(bound))
            batches += [members[i : i + size] for i in range(0, len(members), size)]
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
        self._epochs = {epoch: batches}  # keep one epoch in memory
        return batches

    def locate(self, k):
        """(epoch, index within epoch) of the run's k-th batch."""
        epoch = 0
        while True:
            n = len(self.epoch_batches(epoch))
            if k < n:
                return epoch, k
            k -= n
            epoch += 1

    def iterate(self, start=0, shard=0, num_shards=1):
        """Yields (k, src, tgt) for batches k = start, start+1, ... with k % num_shards == shard."""
        epoch, i = self.locate(start)
        k = start
        while True:
            batches = self.epoch_batches(epoch)
            while i < len(batches):
                if k % num_shards == shard:
                    idx = batches[i]
                    yield k, pad_batch([self.src[j] for j in idx]), pad_batch([self.tgt[j] for j in idx])
                i += 1
                k += 1
            epoch, i = epoch + 1, 0

