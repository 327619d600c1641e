"""Machine-translation training with BLEU, tensor2tensor style, resumable.

Trains a Transformer or an attentional LSTM on a translation problem with a
custom ``tf.function`` training loop, checkpoints model + optimizer + step
every ``--checkpoint-every`` steps, resumes from the latest checkpoint on
restart, and at each checkpoint decodes the evaluation set and appends
``{step, bleu_cased, bleu_uncased, loss, ...}`` to ``OUTPUT_DIR/eval.json``.

Problems:
  * ``synthetic`` (default): a generated Avek -> Tirun corpus (reordering,
    agreement, morphology; see translate/synthetic.py), no download;
  * a TFDS translation config, e.g. ``ted_hrlr_translate/pt_to_en``, read
    from ``--data-dir`` (prepared beforehand: nothing is downloaded);
  * local parallel files: ``--train-src --train-tgt --eval-src --eval-tgt``.

Examples::

    # one-command demo, CPU, a few minutes
    expectigrad-translate --output-dir /tmp/mt_demo

    # the paper's Transformer on a prepared TFDS dataset
    expectigrad-translate --problem ted_hrlr_translate/pt_to_en --data-dir ~/tfds \\
        --model transformer_base --optimizer expectigrad --train-steps 100000 \\
        --output-dir runs/ted_expectigrad

Outputs in ``--output-dir``: ``config.json``, ``vocab.src.subwords`` /
``vocab.tgt.subwords``, ``checkpoints/``, ``tb/`` (TensorBoard),
``eval.json``, ``decodes/step_N.txt`` and, for the synthetic problem,
``data/`` (the corpus as text).

Subcommands (``inference.py``): ``decode`` (translate a file with a run),
``export`` (SavedModel + vocabularies + ``serving.py``) and
``benchmark-decode``; ``train`` or no subcommand trains.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from .. import optimizers as optim  # noqa: E402
from .. import report  # noqa: E402
from . import data as data_lib  # noqa: E402
from . import decoding, models  # noqa: E402

__all__ = ["main", "run", "build_parser", "parse_args", "Trainer"]

# Hparams that fix the shapes of the weights: a resumed run must keep them.
_SHAPE_HPARAMS = ("arch", "layers", "d_model", "heads", "ff", "tie_embeddings", "vocab_size", "layer_norm")
SYNTHETIC_VOCAB_SIZE = 1024


def build_parser():
    p = argparse.ArgumentParser(
        prog="expectigrad-translate",
        description="Train a Transformer/LSTM translation model with Expectigrad or a baseline; "
        "checkpoints, resume, BLEU at each checkpoint. Other commands: "
        "'expectigrad-translate decode --output-dir RUN --input FILE' translates a file, "
        "'expectigrad-translate export --output-dir RUN --export-dir DIR' writes a SavedModel, "
        "'expectigrad-translate benchmark-decode' times cached decoding (each has --help); "
        "'expectigrad-translate train ARGS' is the same as 'expectigrad-translate ARGS'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--problem", default="synthetic",
                   help="'synthetic' (generated corpus; subword vocabularies default to "
                   f"vocab_size={SYNTHETIC_VOCAB_SIZE} there) or a TFDS translation config such as "
                   "ted_hrlr_translate/pt_to_en")
    d.add_argument("--data-dir", default=None, help="TFDS data directory (nothing is downloaded)")
    d.add_argument("--train-split", default="train")
    d.add_argument("--eval-split", default="validation")
    d.add_argument("--reverse", action="store_true",
                   help="swap source and target (e.g. en->pt from ted_hrlr_translate/pt_to_en)")
    d.add_argument("--train-src", help="training source text, one sentence per line")
    d.add_argument("--train-tgt")
    d.add_argument("--eval-src")
    d.add_argument("--eval-tgt")
    d.add_argument("--max-train-examples", type=int, default=None)
    d.add_argument("--max-eval-examples", type=int, default=None,
                   help="decode only the first N evaluation sentences")
    d.add_argument("--synthetic-train-size", type=int, default=50000)
    d.add_argument("--synthetic-eval-size", type=int, default=500)
    d.add_argument("--seed", type=int, default=1, help="corpus, batching and initialisation seed")

    m = p.add_argument_group("model")
    m.add_argument("--model", default="transformer_tiny", choices=sorted(models.HPARAMS))
    m.add_argument("--hparams", default="",
                   help="comma-separated key=value overrides, e.g. layers=2,d_model=256,"
                   "batch_size=2048 (keys: " + ", ".join(sorted(models.HPARAMS["transformer_tiny"])) + ")")

    o = p.add_argument_group("optimizer")
    o.add_argument("--optimizer", default="expectigrad", choices=optim.TRANSLATION_OPTIMIZERS)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--beta1", type=float, default=0.9)
    o.add_argument("--beta2", type=float, default=0.999)
    o.add_argument("--epsilon", type=float, default=1e-8)
    o.add_argument("--schedule", default="none", choices=("none", "warmup_rsqrt"),
                   help="learning-rate schedule; the paper used none")
    o.add_argument("--warmup-steps", type=int, default=4000)

    t = p.add_argument_group("training")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--train-steps", type=int, default=1500)
    t.add_argument("--checkpoint-every", type=int, default=250,
                   help="checkpoint (and evaluate) every N steps, and at the last step")
    t.add_argument("--keep-checkpoints", type=int, default=5)
    t.add_argument("--log-every", type=int, default=50, help="TensorBoard scalars every N steps")
    t.add_argument("--no-eval", action="store_true", help="checkpoint without decoding/BLEU")
    t.add_argument("--beam-size", type=int, default=1, help="1 = greedy decoding")
    t.add_argument("--alpha", type=float, default=0.6, help="beam-search length penalty")
    t.add_argument("--eval-batch-size", type=int, default=64, help="sentences per decoding batch")
    t.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 policy with a LossScaleOptimizer")
    t.add_argument("--strategy", default="default", choices=("default", "mirrored", "multi_worker"))
    t.add_argument("--jit-compile", action="store_true", help="XLA-compile the training step")
    t.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="0 silent, 1 progress bar, 2 one line per log interval")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.train_steps < 0 or args.checkpoint_every < 1:
        raise SystemExit("--train-steps must be >= 0 and --checkpoint-every >= 1")
    return args


def _make_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"  # what TensorBoard's scalar dashboard reads
    return meta.SerializeToString()


_SCALAR_METADATA = None


def summary_scalar(tag, value, step):
    """A TensorBoard scalar via core ``tf.summary.write`` (needs no tensorboard package)."""
    global _SCALAR_METADATA
    if _SCALAR_METADATA is None:
        _SCALAR_METADATA = _scalar_metadata()
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=_SCALAR_METADATA)


def _to_float(x):
    """float() of a tensor, a Keras variable (also a mirrored one) or a number."""
    value = getattr(x, "value", x)
    return float(tf.convert_to_tensor(value).numpy())


def seed_states(model):
    """The state variables of the model's seed generators (dropout RNG).

    Keras keeps them in ``SeedGenerator`` objects that ``tf.train.Checkpoint``
    does not track; checkpointing them makes a resumed run draw the same
    dropout masks as an uninterrupted one.
    """
    states = []
    for layer in model._flatten_layers(include_self=True):
        for gen in getattr(layer, "_seed_generators", ()):
            states.append(gen.state)
    return states


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


class Trainer:
    """Holds everything of one run; ``setup()`` builds and restores, ``train()`` trains."""

    def __init__(self, args):
        self.args = args
        self.out = args.output_dir
        self.log = print if args.verbose else (lambda *a, **k: None)

    # ------------------------------------------------------------------ setup
    def setup(self):
        args = self.args
        os.makedirs(self.out, exist_ok=True)
        hp = models.get_hparams(args.model, args.hparams)
        if args.problem == "synthetic" and not args.train_src and "vocab_size" not in args.hparams:
            hp["vocab_size"] = SYNTHETIC_VOCAB_SIZE
        self.hp = hp
        self._check_config()
        # First, before other TensorFlow work: multi-worker collectives must
        # be configured at program start.
        self.strategy = _make_strategy(args.strategy)
        self.chief = _is_chief(self.strategy)

        t0 = time.time()
        train_pairs, eval_pairs, info = data_lib.load_problem(args)
        self.data_info = info
        self.src_vocab = data_lib.build_or_load_vocab(
            os.path.join(self.out, "vocab.src"), (s for s, _ in train_pairs), hp["vocab_size"])
        self.tgt_vocab = data_lib.build_or_load_vocab(
            os.path.join(self.out, "vocab.tgt"), (t for _, t in train_pairs), hp["vocab_size"])
        src, tgt = data_lib.encode_pairs(train_pairs, self.src_vocab, self.tgt_vocab)
        self.schedule = data_lib.BatchSchedule(src, tgt, hp["batch_size"], hp["max_len"], args.seed)
        self.eval_refs = [t for _, t in eval_pairs]
        self.eval_src, self.eval_tgt = data_lib.encode_pairs(eval_pairs, self.src_vocab, self.tgt_vocab)
        self.log(f"[data] {info} | vocab src={self.src_vocab.size} tgt={self.tgt_vocab.size} | "
                 f"{len(self.schedule)} training pairs kept, {self.schedule.dropped} longer than "
                 f"max_len={hp['max_len']} dropped | {time.time() - t0:.1f}s")

        previous_policy = keras.mixed_precision.global_policy()
        if args.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            with self.strategy.scope():
                keras.utils.set_random_seed(args.seed)
                self.model = models.build_model(hp, self.src_vocab.size, self.tgt_vocab.size)
                opt = optim.make_translation_optimizer(
                    args.optimizer, args.lr, args.beta1, args.beta2, args.epsilon,
                    args.schedule, args.warmup_steps, hp["clip_norm"])
                if args.mixed_precision:
                    opt = keras.optimizers.LossScaleOptimizer(opt)
                opt.build(self.model.trainable_variables)
                self.optimizer = opt
                self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
                self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                                 name="train_seconds")
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        self.num_params = int(sum(np.prod(v.shape) for v in self.model.trainable_variables))

        ckpt_dir = os.path.join(self.out, "checkpoints")
        if not self.chief:  # every worker must save; only the chief's copy is kept
            task = self.strategy.cluster_resolver.task_id
            ckpt_dir = os.path.join(self.out, "workers", f"task_{task}", "checkpoints")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, step=self.step,
            train_seconds=self.train_seconds, rng=seed_states(self.model))
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, ckpt_dir, max_to_keep=args.keep_checkpoints)
        self.restored_from = self.manager.latest_checkpoint
        if self.restored_from:
            self.checkpoint.restore(self.restored_from).assert_existing_objects_matched()
            self.log(f"[resume] {self.restored_from} at step {int(self.step.numpy())}")
        if args.schedule == "none":
            # A changed --lr on restart wins over the checkpointed value.
            _inner(self.optimizer).learning_rate = args.lr

        self.decoder = decoding.Decoder(
            self.model, self.tgt_vocab.bos_id, self.tgt_vocab.eos_id,
            hp["max_decode_len"], args.beam_size, args.alpha)
        tb = os.path.join(self.out, "tb") if self.chief else None
        self.writer = tf.summary.create_file_writer(tb) if tb else tf.summary.create_noop_writer()
        self._build_steps()
        self.log(f"[model] {args.model} {self.num_params:,} parameters, hparams "
                 f"{json.dumps(hp, sort_keys=True)} | optimizer {args.optimizer} "
                 f"({optim.describe(args.optimizer)}) | strategy {args.strategy} "
                 f"({self.strategy.num_replicas_in_sync} replicas)")
        return self

    def _check_config(self):
        path = os.path.join(self.out, "config.json")
        config = {"args": vars(self.args), "hparams": self.hp}
        has_checkpoint = os.path.exists(os.path.join(self.out, "checkpoints", "checkpoint"))
        if has_checkpoint and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            old_hp = models.complete_hparams(old.get("hparams", {}))
            for key in _SHAPE_HPARAMS:
                if old_hp.get(key) != self.hp.get(key):
                    raise SystemExit(
                        f"{self.out} holds a run with {key}={old_hp.get(key)!r}, "
                        f"this one has {key}={self.hp.get(key)!r}: use another --output-dir")
            for key in ("problem", "optimizer", "train_src", "seed"):
                if old["args"].get(key) != config["args"].get(key):
                    print(f"[warning] {key} changed from {old['args'].get(key)!r} to "
                          f"{config['args'].get(key)!r} since this output dir was created",
                          file=sys.stderr)
        report.write_json(path, config, indent=1, newline=True, atomic=True)

    # ------------------------------------------------------------ tf.functions
    def _losses(self, logits, labels):
        """(label-smoothed loss sum, plain cross-entropy sum, token count), float32."""
        mask = tf.cast(tf.not_equal(labels, 0), tf.float32)
        logp = tf.nn.log_softmax(logits, axis=-1)
        nll = -tf.gather(logp, labels, batch_dims=2)
        ls = self.hp["label_smoothing"]
        smooth = (1.0 - ls) * nll - ls * tf.reduce_mean(logp, axis=-1) if ls else nll
        return tf.reduce_sum(smooth * mask), tf.reduce_sum(nll * mask), tf.reduce_sum(mask)

    def _decoder_input(self, tgt):
        bos = tf.fill([tf.shape(tgt)[0], 1], tf.constant(self.tgt_vocab.bos_id, tf.int32))
        return tf.concat([bos, tgt[:, :-1]], axis=1)

    def _build_steps(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy

        def replica_step(src, tgt):
            ntok = tf.reduce_sum(tf.cast(tf.not_equal(tgt, 0), tf.float32))
            total = tf.distribute.get_replica_context().all_reduce("sum", ntok)
            with tf.GradientTape() as tape:
                logits = model((src, self._decoder_input(tgt)), training=True)
                smooth, nll, _ = self._losses(logits, tgt)
                loss = smooth / tf.maximum(total, 1.0)
                scaled = optimizer.scale_loss(loss)
            variables = model.trainable_variables
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return smooth, nll, ntok

        def train_step(iterator):
            src, tgt = next(iterator)
            out = strategy.run(replica_step, args=(src, tgt))
            return [strategy.reduce("sum", x, axis=None) for x in out]

        self.train_step = tf.function(train_step, jit_compile=self.args.jit_compile)

        spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[spec, spec])
        def eval_step(src, tgt):
            logits = model((src, self._decoder_input(tgt)), training=False)
            return self._losses(logits, tgt)[1:]

        self.eval_step = eval_step

    def _dataset(self, start_step):
        n_rep = self.strategy.num_replicas_in_sync
        spec = tf.TensorSpec([None, None], tf.int32)
        schedule = self.schedule

        def dataset_fn(ctx):
            def gen():
                for _, s, t in schedule.iterate(start_step * n_rep, ctx.input_pipeline_id,
                                                ctx.num_input_pipelines):
                    yield s, t

            ds = tf.data.Dataset.from_generator(gen, output_signature=(spec, spec))
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(options).prefetch(4)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------- evaluation
    def eval_records(self):
        path = os.path.join(self.out, "eval.json")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def evaluate(self, train_loss=None):
        """Decodes the evaluation set, computes BLEU and loss, appends to eval.json."""
        step = int(self.step.numpy())
        t0 = time.time()
        loss_sum = tok = 0.0
        bs = self.args.eval_batch_size
        order = np.argsort([len(s) for s in self.eval_src], kind="stable")
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            s = data_lib.pad_batch([self.eval_src[j] for j in idx])
            t = data_lib.pad_batch([self.eval_tgt[j] for j in idx])
            nll, n = self.eval_step(tf.constant(s), tf.constant(t))
            loss_sum += float(nll)
            tok += float(n)
        ids = self.decoder.decode_ids(self.eval_src, batch_size=bs)
        hyps = [self.tgt_vocab.decode(x) for x in ids]
        cased, uncased = decoding.bleu(hyps, self.eval_refs)
        record = {
            "step": step,
            "bleu_cased": round(cased, 4),
            "bleu_uncased": round(uncased, 4),
            "loss": round(loss_sum / max(tok, 1.0), 6),
            "train_loss": None if train_loss is None else round(train_loss, 6),
            "train_seconds": round(float(self.train_seconds.numpy()), 1),
            "eval_seconds": round(time.time() - t0, 1),
            "optimizer": self.args.optimizer,
            "model": self.args.model,
            "beam_size": self.args.beam_size,
        }
        if self.chief:
            os.makedirs(os.path.join(self.out, "decodes"), exist_ok=True)
            with open(os.path.join(self.out, "decodes", f"step_{step}.txt"), "w", encoding="utf-8") as f:
                f.writelines(h + "\n" for h in hyps)
            records = [r for r in self.eval_records() if r["step"] != step] + [record]
            report.write_json(os.path.join(self.out, "eval.json"), records, indent=1, newline=True,
                              atomic=True)
            with self.writer.as_default(step=step):
                summary_scalar("eval/bleu_cased", cased, step)
                summary_scalar("eval/bleu_uncased", uncased, step)
                summary_scalar("eval/loss", record["loss"], step)
            self.writer.flush()
        return record

    # --------------------------------------------------------------- training
    def _save(self):
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        return path

    def train(self):
        args = self.args
        step = int(self.step.numpy())
        evaluated = {r["step"] for r in self.eval_records()}
        if self.chief and not args.no_eval and step > 0 and step not in evaluated and self.restored_from:
            self.log(f"[eval] checkpoint of step {step} has no evaluation yet")
            self._report(self.evaluate())
        if step >= args.train_steps:
            self.log(f"[done] already at step {step} >= --train-steps {args.train_steps}")
            return self
        iterator = iter(self._dataset(step))
        bar = keras.utils.Progbar(args.train_steps, verbose=1 if args.verbose == 1 else 0,
                                  stateful_metrics=["loss", "nll", "tok/s"])
        acc = {"smooth": 0.0, "nll": 0.0, "tok": 0.0, "t": time.time(), "ckpt_smooth": 0.0, "ckpt_tok": 0.0}
        seconds = float(self.train_seconds.numpy())
        last = time.time()
        while step < args.train_steps:
            smooth, nll, ntok = (float(x) for x in self.train_step(iterator))
            step += 1
            if not hasattr(self, "_dispatch_logged"):
                self._dispatch_logged = True
                report = getattr(_inner(self.optimizer), "dispatch_report", None)
                if report is not None:  # Expectigrad: which update path each variable took
                    paths = sorted({p for p, _ in report().values()})
                    self.log("[optimizer] Expectigrad update paths: " + ", ".join(paths))
            now = time.time()
            seconds += now - last
            last = now
            for k, v in (("smooth", smooth), ("nll", nll), ("tok", ntok)):
                acc[k] += v
            acc["ckpt_smooth"] += smooth
            acc["ckpt_tok"] += ntok
            if not np.isfinite(smooth):
                self.log(f"[warning] non-finite loss at step {step}")
            if step % args.log_every == 0 or step == args.train_steps:
                tok = max(acc["tok"], 1.0)
                rate = acc["tok"] / max(time.time() - acc["t"], 1e-9)
                with self.writer.as_default(step=step):
                    summary_scalar("train/loss", acc["smooth"] / tok, step)
                    summary_scalar("train/nll", acc["nll"] / tok, step)
                    summary_scalar("train/tokens_per_second", rate, step)
                    summary_scalar("train/learning_rate", _to_float(_inner(self.optimizer).learning_rate), step)
                bar.update(step, [("loss", acc["smooth"] / tok), ("nll", acc["nll"] / tok), ("tok/s", rate)])
                if args.verbose == 2:
                    self.log(f"step {step} loss {acc['smooth'] / tok:.4f} nll {acc['nll'] / tok:.4f} "
                             f"{rate:.0f} tok/s")
                acc.update(smooth=0.0, nll=0.0, tok=0.0, t=time.time())
            if step % args.checkpoint_every == 0 or step == args.train_steps:
                self.step.assign(step)
                self.train_seconds.assign(seconds)
                path = self._save()
                train_loss = acc["ckpt_smooth"] / max(acc["ckpt_tok"], 1.0)
                acc.update(ckpt_smooth=0.0, ckpt_tok=0.0)
                if args.verbose == 1:
                    print()
                self.log(f"[checkpoint] {path}")
                if self.chief and not args.no_eval:
                    self._report(self.evaluate(train_loss))
                last = time.time()
        self.writer.flush()
        return self

    def _report(self, r):
        self.log(f"[eval] step {r['step']}: BLEU cased {r['bleu_cased']:.2f} uncased "
                 f"{r['bleu_uncased']:.2f} | eval loss {r['loss']:.4f} | "
                 f"{r['train_seconds']:.0f}s training, {r['eval_seconds']:.0f}s evaluation")


def run(argv=None):
    """Parses ``argv``, trains, returns the Trainer."""
    args = parse_args(argv)
    return Trainer(args).setup().train()


SUBCOMMANDS = ("train", "decode", "export", "benchmark-decode")


def main(argv=None):
    """Console-script entry point; returns the exit status.

    ``expectigrad-translate [train] ARGS`` trains (no subcommand = train, as
    before subcommands existed); ``decode``, ``export`` and
    ``benchmark-decode`` are in ``inference.py``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS[1:]:
        from . import inference

        return inference.COMMANDS[argv[0]](argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
