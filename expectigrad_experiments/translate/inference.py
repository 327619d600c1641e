"""Using a trained run: ``expectigrad-translate decode``, ``export`` and ``benchmark-decode``.

``decode`` translates a file (or standard input) with a run directory's
vocabularies, hparams and latest (or ``--checkpoint``) checkpoint::

    expectigrad-translate decode --output-dir RUN --input src.txt --output out.txt \\
        [--beam-size 4 --alpha 0.6] [--reference ref.txt]

``export`` writes a SavedModel (token ids in, token ids out) with the
vocabularies and the stand-alone loader ``serving.py`` (see that module)::

    expectigrad-translate export --output-dir RUN --export-dir EXPORT [--beam-size 4]
    python EXPORT/serving.py EXPORT --input src.txt --output out.txt

``benchmark-decode`` times cached against uncached decoding (docs/BENCHMARKS.md)::

    expectigrad-translate benchmark-decode --model transformer_small --sentences 200
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import data as data_lib  # noqa: E402
from . import decoding, models, serving  # noqa: E402

__all__ = ["load_run", "decode_main", "export_main", "benchmark_main", "RunFiles"]


# Longer source lines are truncated (with a warning). Training drops pairs
# longer than max_len (64 by default) and its evaluation truncates nothing, so
# this only guards the memory and time of a stray very long line.
DEFAULT_MAX_SOURCE_LEN = 512


def _fail(message):
    raise SystemExit(f"expectigrad-translate: error: {message}")


def restore_weights(model, path):
    """Loads a training checkpoint's weights into ``model``.

    The trainer's checkpoint reaches the layers kept in Python lists (the
    Transformer's encoder/decoder layers, the LSTM stacks) only through the
    optimizer's list of the variables it updates
    (``optimizer[/inner_optimizer]/_trainable_variables/N``, in
    ``model.trainable_variables`` order; a variable that is also reachable
    from the model, such as the embeddings, is saved once, under ``model/``),
    so they are restored through a stand-in holding that list.
    """
    keys = set(tf.train.load_checkpoint(path).get_variable_to_shape_map())
    holder = tf.Module()
    holder._trainable_variables = list(model.trainable_variables)
    if any(k.startswith("optimizer/_trainable_variables/") for k in keys):
        optimizer = holder
    else:  # a LossScaleOptimizer (--mixed-precision) wraps the optimizer
        optimizer = tf.Module()
        optimizer.inner_optimizer = holder
    # Raises unless every variable of the model was found in the checkpoint
    # (with its shape): under model/ or in the optimizer's list.
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).expect_partial() \
        .assert_existing_objects_matched()


class RunFiles:
    """What a run directory provides for decoding: hparams, vocabularies, a model with its weights."""

    def __init__(self, output_dir, checkpoint=None):
        self.dir = output_dir
        if not os.path.isdir(output_dir):
            _fail(f"--output-dir {output_dir!r}: no such directory")
        config_path = os.path.join(output_dir, "config.json")
        if not os.path.isfile(config_path):
            _fail(f"--output-dir {output_dir!r} holds no config.json: not an expectigrad-translate "
                  "run directory (train one with: expectigrad-translate --output-dir DIR)")
        with open(config_path, encoding="utf-8") as f:
            self.config = json.load(f)
        self.hp = models.complete_hparams(self.config["hparams"])
        self.vocab_paths = {}
        for side in ("src", "tgt"):
            path = os.path.join(output_dir, f"vocab.{side}.subwords")
            if not os.path.isfile(path):
                _fail(f"--output-dir {output_dir!r} lacks the vocabulary {path}: training writes it "
                      "before the first step; was the run interrupted before that?")
            self.vocab_paths[side] = path
        self.checkpoint = self._find_checkpoint(checkpoint)
        self.src_vocab = data_lib.build_or_load_vocab(self.vocab_paths["src"][: -len(".subwords")], (), 0)
        self.tgt_vocab = data_lib.build_or_load_vocab(self.vocab_paths["tgt"][: -len(".subwords")], (), 0)
        self.model = models.build_model(self.hp, self.src_vocab.size, self.tgt_vocab.size)
        try:
            restore_weights(self.model, self.checkpoint)
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            _fail(f"checkpoint {self.checkpoint!r} does not fit the model of {config_path} ({e})")
        self.step = self._step_of(self.checkpoint)

    def _find_checkpoint(self, checkpoint):
        ckpt_dir = os.path.join(self.dir, "checkpoints")
        if checkpoint is None:
            latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
            if latest is None:
                _fail(f"--output-dir {self.dir!r} has no checkpoint in {ckpt_dir} "
                      "(training saves one every --checkpoint-every steps)")
            return latest
        candidates = [checkpoint]
        if str(checkpoint).isdigit():  # a step number
            candidates.insert(0, os.path.join(ckpt_dir, f"ckpt-{int(checkpoint)}"))
        else:
            candidates.append(os.path.join(ckpt_dir, checkpoint))
        for path in candidates:
            if os.path.isfile(path + ".index"):
                return path
        found = sorted(f[: -len(".index")] for f in os.listdir(ckpt_dir) if f.endswith(".index")) \
            if os.path.isdir(ckpt_dir) else []
        _fail(f"--checkpoint {checkpoint!r}: no such checkpoint (a step number or a path such as "
              f"{os.path.join(ckpt_dir, 'ckpt-N')}); {self.dir} has: {', '.join(found) or 'none'}")

    @staticmethod
    def _step_of(path):
        tail = os.path.basename(path)
        return int(tail.rsplit("-", 1)[1]) if tail.rsplit("-", 1)[-1].isdigit() else None

    def decoder(self, beam_size=1, alpha=0.6, cached=True, max_decode_len=None):
        return decoding.Decoder(self.model, self.tgt_vocab.bos_id, self.tgt_vocab.eos_id,
                                max_decode_len or self.hp["max_decode_len"], beam_size, alpha, cached)


def load_run(output_dir, checkpoint=None):
    return RunFiles(output_dir, checkpoint)


def _positive(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} expects an integer >= 1, got {text!r}")
        return value
    return parse


def _alpha(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alpha expects a number >= 0, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"--alpha expects a finite number >= 0, got {text!r}")
    return value


def _add_search_args(p):
    p.add_argument("--output-dir", required=True, help="the training run's directory")
    p.add_argument("--checkpoint", default=None,
                   help="a step number or a checkpoint path (default: the latest)")
    p.add_argument("--beam-size", type=_positive("--beam-size"), default=1, help="1 = greedy")
    p.add_argument("--alpha", type=_alpha, default=0.6,
                   help="beam-search length penalty ((5 + length) / 6) ** alpha (tensor2tensor's)")
    p.add_argument("--max-source-len", type=_positive("--max-source-len"), default=None,
                   help="longer source lines are truncated to this many subword tokens, EOS included, "
                   f"with a warning (default: {DEFAULT_MAX_SOURCE_LEN})")


# ----------------------------------------------------------------------- decode
def build_decode_parser():
    p = argparse.ArgumentParser(
        prog="expectigrad-translate decode",
        description="Translate a text file (one sentence per line) with a trained run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_search_args(p)
    p.add_argument("--input", required=True, help="source text, one sentence per line ('-' = stdin)")
    p.add_argument("--output", default="-", help="where to write the translations ('-' = stdout)")
    p.add_argument("--reference", default=None,
                   help="reference translations, line-aligned with --input: print sacrebleu BLEU "
                   "(cased and uncased; on stderr when --output is '-')")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=64,
                   help="sentences per decoding batch (sentences are batched by length)")
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the decoder on the whole prefix at each step (slow; for checking)")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return p


def _read(path, flag):
    try:
        return serving.read_lines(path)
    except FileNotFoundError:
        _fail(f"{flag} {path!r}: no such file")
    except IsADirectoryError:
        _fail(f"{flag} {path!r} is a directory")
    except UnicodeDecodeError as e:
        _fail(f"{flag} {path!r} is not UTF-8 text ({e})")


def translate_lines(run, lines, decoder, max_source_len, batch_size, warn):
    """Translations of ``lines`` (empty lines -> empty strings) and the numbers
    of the lines holding characters the source vocabulary has no subword for."""
    keep = [i for i, line in enumerate(lines) if line.strip()]
    src = [np.asarray(serving.encode_line(run.src_vocab.encoder.encode, lines[i], run.src_vocab.eos_id,
                                          max_source_len, warn, i + 1), np.int32) for i in keep]
    # A subword vocabulary spells single ASCII characters with its byte fallback
    # anyway; a non-ASCII character that no subword contains is one training
    # (nearly) never saw.
    known = set("".join(run.src_vocab.encoder.subwords))
    unknown = [i + 1 for i in keep if any(ord(c) > 127 and c not in known for c in lines[i])]
    ids = decoder.decode_ids(src, batch_size=batch_size) if src else []
    out = [""] * len(lines)
    for i, seq in zip(keep, ids):
        out[i] = run.tgt_vocab.decode(seq)
    return out, unknown


def decode_main(argv=None):
    args = build_decode_parser().parse_args(argv)
    lines = _read(args.input, "--input")
    refs = None
    if args.reference is not None:
        refs = _read(args.reference, "--reference")
        if len(refs) != len(lines):
            _fail(f"--reference {args.reference!r} has {len(refs)} lines but --input {args.input!r} "
                  f"has {len(lines)}: they must be line-aligned")
    run = RunFiles(args.output_dir, args.checkpoint)
    max_source_len = args.max_source_len or DEFAULT_MAX_SOURCE_LEN
    decoder = run.decoder(args.beam_size, args.alpha, cached=not args.no_cache)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    warn = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    t0 = time.time()
    hyps, unknown = translate_lines(run, lines, decoder, max_source_len, args.batch_size, warn)
    seconds = time.time() - t0
    serving.write_lines(args.output, hyps)
    search = "greedy" if args.beam_size == 1 else f"beam {args.beam_size}, alpha {args.alpha}"
    log(f"[decode] {len(lines)} lines ({len(lines) - sum(1 for x in lines if x.strip())} empty) "
        f"with {run.checkpoint} ({search}) in {seconds:.1f}s")
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        log(f"[decode] {len(unknown)} lines hold characters that no source subword contains "
            f"(encoded byte by byte, as in training): lines {shown}")
    if refs is not None:
        cased, uncased = decoding.bleu(hyps, refs)
        stream = sys.stderr if args.output == "-" else sys.stdout
        print(f"BLEU cased {cased:.2f} uncased {uncased:.2f} ({len(refs)} sentences, sacrebleu 13a)",
              file=stream)
    return 0


# ----------------------------------------------------------------------- export
def build_export_parser():
    p = argparse.ArgumentParser(
        prog="expectigrad-translate export",
        description="Export a trained run as a SavedModel (token ids in, token ids out) with its "
        "vocabularies and the stand-alone loader serving.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_search_args(p)
    p.add_argument("--export-dir", required=True, help="a new (or empty) directory")
    return p


def export(run, export_dir, beam_size=1, alpha=0.6, max_source_len=None):
    """Writes ``export_dir`` (see serving.py for its layout); returns the metadata dict."""
    import keras

    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        _fail(f"--export-dir {export_dir!r} exists and is not an empty directory")
    decoder = run.decoder(beam_size, alpha, cached=True)
    spec = tf.TensorSpec([None, None], tf.int32, name="source_ids")

    @tf.function(input_signature=[spec])
    def serve(source_ids):
        return {"output_ids": decoder.decode_batch(source_ids)}

    os.makedirs(export_dir, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(os.path.join(export_dir, "saved_model"), verbose=False)
    for side in ("src", "tgt"):
        shutil.copyfile(run.vocab_paths[side], os.path.join(export_dir, f"vocab.{side}.subwords"))
    shutil.copyfile(serving.__file__, os.path.join(export_dir, "serving.py"))
    meta = {
        "format": 1,
        "src_eos_id": run.src_vocab.eos_id,
        "tgt_eos_id": run.tgt_vocab.eos_id,
        "tgt_bos_id": run.tgt_vocab.bos_id,
        "max_source_len": int(max_source_len or DEFAULT_MAX_SOURCE_LEN),
        "max_decode_len": run.hp["max_decode_len"],
        "beam_size": beam_size,
        "alpha": alpha,
        "run_dir": os.path.abspath(run.dir),
        "checkpoint": os.path.abspath(run.checkpoint),
        "step": run.step,
        "hparams": run.hp,
        "signature": {"name": "serving_default", "inputs": {"source_ids": "int32 [batch, length]"},
                      "outputs": {"output_ids": "int32 [batch, length]"}},
    }
    with open(os.path.join(export_dir, "translate.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def export_main(argv=None):
    args = build_export_parser().parse_args(argv)
    run = RunFiles(args.output_dir, args.checkpoint)
    meta = export(run, args.export_dir, args.beam_size, args.alpha, args.max_source_len)
    print(f"[export] {run.checkpoint} (step {meta['step']}) -> {args.export_dir} "
          f"({'greedy' if args.beam_size == 1 else f'beam {args.beam_size}'}); translate with:\n"
          f"  python {os.path.join(args.export_dir, 'serving.py')} {args.export_dir} --input FILE")
    return 0


# ------------------------------------------------------------- benchmark-decode
def build_benchmark_parser():
    p = argparse.ArgumentParser(
        prog="expectigrad-translate benchmark-decode",
        description="Time cached (incremental) against uncached decoding on long synthetic "
        "sentences; randomly initialised weights unless --output-dir names a trained run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="transformer_small", choices=sorted(models.HPARAMS))
    p.add_argument("--hparams", default="", help="key=value overrides")
    p.add_argument("--output-dir", default=None, help="a trained run to time instead (its weights)")
    p.add_argument("--sentences", type=_positive("--sentences"), default=200)
    p.add_argument("--min-tokens", type=_positive("--min-tokens"), default=40,
                   help="each source sentence has at least this many subword tokens")
    p.add_argument("--decode-len", type=_positive("--decode-len"), default=64,
                   help="max_decode_len: an untrained model rarely stops earlier")
    p.add_argument("--beam-size", type=_positive("--beam-size"), default=1)
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=50)
    p.add_argument("--repeats", type=_positive("--repeats"), default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def _long_sources(vocab, n, min_tokens, seed):
    """``n`` source id arrays of >= min_tokens tokens: synthetic sentences joined until long enough."""
    from . import synthetic

    corpus = synthetic.generate_corpus(seed, n_train=n * 8, n_eval=1)
    sentences = [s for s, _ in corpus.train]
    out, cur = [], []
    for s in sentences:
        cur.append(s)
        ids = vocab.encode(" ".join(cur))
        if len(ids) >= min_tokens:
            out.append(np.asarray(ids, np.int32))
            cur = []
            if len(out) == n:
                return out
    raise SystemExit(f"could not build {n} sentences of {min_tokens}+ tokens")


def benchmark_main(argv=None):
    import tempfile

    import keras

    args = build_benchmark_parser().parse_args(argv)
    if args.output_dir:
        run = RunFiles(args.output_dir)
        model, src_vocab, tgt_vocab, hp = run.model, run.src_vocab, run.tgt_vocab, run.hp
        what = f"{args.output_dir} ({run.checkpoint})"
    else:
        from . import synthetic

        hp = models.get_hparams(args.model, args.hparams)
        corpus = synthetic.generate_corpus(args.seed, n_train=5000, n_eval=1)
        with tempfile.TemporaryDirectory() as tmp:
            src_vocab = data_lib.build_or_load_vocab(os.path.join(tmp, "src"), (s for s, _ in corpus.train), 1024)
            tgt_vocab = data_lib.build_or_load_vocab(os.path.join(tmp, "tgt"), (t for _, t in corpus.train), 1024)
        keras.utils.set_random_seed(args.seed)
        model = models.build_model(hp, src_vocab.size, tgt_vocab.size)
        what = f"{args.model}, random weights (seed {args.seed})"
    src = _long_sources(src_vocab, args.sentences, args.min_tokens, args.seed + 1)
    lengths = [len(s) for s in src]
    decoders = {cached: decoding.Decoder(model, tgt_vocab.bos_id, tgt_vocab.eos_id, args.decode_len,
                                         args.beam_size, 0.6, cached) for cached in (True, False)}
    for dec in decoders.values():  # trace every batch shape once, untimed
        dec.decode_ids(src, batch_size=args.batch_size)
    results, outputs = {"cached": [], "uncached": []}, {}
    for _ in range(args.repeats):  # alternate, so that a change of machine load hits both
        for cached, dec in decoders.items():
            t0 = time.perf_counter()
            outputs[cached] = dec.decode_ids(src, batch_size=args.batch_size)
            results["cached" if cached else "uncached"].append(time.perf_counter() - t0)
    out_len = [len(x) for x in outputs[True]]
    med_c, med_u = statistics.median(results["cached"]), statistics.median(results["uncached"])
    report = {
        "model": what, "sentences": len(src), "source_tokens_min": min(lengths),
        "source_tokens_mean": round(float(np.mean(lengths)), 1),
        "output_tokens_mean": round(float(np.mean(out_len)), 1), "beam_size": args.beam_size,
        "batch_size": args.batch_size, "repeats": args.repeats,
        "cached_seconds": [round(t, 3) for t in results["cached"]],
        "uncached_seconds": [round(t, 3) for t in results["uncached"]],
        "cached_median": round(med_c, 3), "uncached_median": round(med_u, 3),
        "speedup": round(med_u / med_c, 2), "identical_outputs": outputs[True] == outputs[False],
    }
    print(f"[benchmark-decode] {what}: {len(src)} sentences, source tokens min {min(lengths)} "
          f"mean {report['source_tokens_mean']}, output tokens mean {report['output_tokens_mean']}, "
          f"{'greedy' if args.beam_size == 1 else f'beam {args.beam_size}'}, batch {args.batch_size}")
    print(f"  cached   median {med_c:.2f}s  ({', '.join(f'{t:.2f}' for t in results['cached'])})")
    print(f"  uncached median {med_u:.2f}s  ({', '.join(f'{t:.2f}' for t in results['uncached'])})")
    print(f"  speedup {med_u / med_c:.2f}x; identical outputs: {report['identical_outputs']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


COMMANDS = {"decode": decode_main, "export": export_main, "benchmark-decode": benchmark_main}
