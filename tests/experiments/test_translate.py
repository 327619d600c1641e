"""Tests of the translation trainer, expectigrad_experiments.translate (tiny
models, a few steps each)."""

import json
import os
import re

import numpy as np
import pytest

from expectigrad_experiments import optimizers as optim
from expectigrad_experiments.translate import data as data_lib
from expectigrad_experiments.translate import decoding, models, synthetic
from expectigrad_experiments.translate import trainer as translate

TINY = "layers=1,d_model=32,heads=2,ff=64,batch_size=256,vocab_size=300,max_len=48,max_decode_len=24"
SMALL_DATA = ["--synthetic-train-size", "400", "--synthetic-eval-size", "12"]


def _argv(out, *extra, steps=2, every=2, model="transformer_tiny", hparams=TINY):
    return ["--output-dir", str(out), "--model", model, "--hparams", hparams,
            "--train-steps", str(steps), "--checkpoint-every", str(every),
            "--verbose", "0", "--log-every", "1", *extra]


def _eval_records(out):
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)


def _check_record(rec):
    assert set(rec) >= {"step", "bleu_cased", "bleu_uncased", "loss"}
    assert 0.0 <= rec["bleu_cased"] <= 100.0 and 0.0 <= rec["bleu_uncased"] <= 100.0
    assert np.isfinite(rec["loss"]) and rec["loss"] > 0


# ------------------------------------------------------------ synthetic corpus
def test_synthetic_corpus_is_deterministic_from_seed():
    a = synthetic.generate_corpus(seed=7, n_train=1000, n_eval=50)
    b = synthetic.generate_corpus(seed=7, n_train=1000, n_eval=50)
    c = synthetic.generate_corpus(seed=8, n_train=1000, n_eval=50)
    assert a.train == b.train and a.eval == b.eval
    assert a.train != c.train
    assert not {s for s, _ in a.eval} & {s for s, _ in a.train}  # held-out sources
    assert len({s for s, _ in a.train}) > 900  # mostly distinct sentences


def test_synthetic_lexicons_are_bijective_and_disjoint():
    lex = synthetic.make_lexicon(3)
    src = lex.src_nouns + lex.src_adjs + lex.src_tverbs + lex.src_iverbs + lex.src_preps
    tgt = lex.tgt_nouns + lex.tgt_adjs + lex.tgt_tverbs + lex.tgt_iverbs + lex.tgt_posts
    assert len(set(src)) == len(src) and len(set(tgt)) == len(tgt)
    assert set(lex.genders) == {"m", "f"}


def test_synthetic_grammar_reorders_and_agrees():
    lex = synthetic.make_lexicon(5)
    fem = lex.genders.index("f")
    masc = lex.genders.index("m")
    clause = {
        "subj": {"noun": fem, "det": "def", "num": "pl", "adjs": [0, 1]},
        "transitive": True, "verb": 2,
        "obj": {"noun": masc, "det": "indef", "num": "sg", "adjs": [3]},
        "pp": (1, {"noun": masc, "det": "def", "num": "pl", "adjs": []}),
        "neg": True, "past": True,
    }
    src = synthetic.render_source([clause], lex)
    tgt = synthetic.render_target([clause], lex)
    A, N, V = lex.src_adjs, lex.src_nouns, lex.src_tverbs
    expected_src = (f"ka {A[0]} {A[1]} {N[fem]}en ne ta {V[2]}o mo {A[3]} {N[masc]} "
                    f"{lex.src_preps[1]} ka {N[masc]}en.")
    assert src == expected_src[0].upper() + expected_src[1:]
    TA, TN, TV = lex.tgt_adjs, lex.tgt_nouns, lex.tgt_tverbs
    # SOV, noun before adjectives, gender/number agreement, object particle,
    # postposition, negative prefix, verb agrees with the (feminine plural) subject.
    expected_tgt = (f"{TN[fem]}ot {TA[0]}e {TA[1]}e lu {TN[masc]} {TA[3]} hen wa "
                    f"{TN[masc]}im lu {lex.tgt_posts[1]} na{TV[2]}urvi.")
    assert tgt == expected_tgt[0].upper() + expected_tgt[1:]

    # Verb agreement depends on the subject's *target* gender, invisible in the source.
    for gender, suffix in (("m", "ak"), ("f", "esh")):
        noun = lex.genders.index(gender)
        c = dict(clause, subj={"noun": noun, "det": "def", "num": "sg", "adjs": []}, neg=False, past=False)
        assert synthetic.render_target([c], lex).endswith(f"{TV[2]}{suffix}.")
        assert synthetic.render_source([c], lex).split()[2] == f"{V[2]}i"


def test_synthetic_corpus_statistics():
    corpus = synthetic.generate_corpus(seed=1, n_train=3000, n_eval=10)
    lex = corpus.lexicon
    verbs = "|".join(lex.tgt_tverbs + lex.tgt_iverbs)
    endings = "|".join(set(synthetic.TGT_VERB_AGREEMENT.values()))
    verb_re = re.compile(f"^(na)?({verbs})({endings})(vi)?$")
    for src, tgt in corpus.train[:500]:
        assert src[0].isupper() and src.endswith(".") and tgt.endswith(".")
        assert verb_re.match(tgt[:-1].split()[-1].lower()), tgt  # SOV: the verb is last
    lengths = [len(s.split()) for s, _ in corpus.train]
    assert 3 <= np.mean(lengths) <= 15 and max(lengths) >= 20
    assert sum(" u " in s for s, _ in corpus.train) > 300  # coordinations


# ------------------------------------------------------------------ vocabulary
def test_vocab_round_trip_and_cache(tmp_path):
    corpus = synthetic.generate_corpus(seed=2, n_train=800, n_eval=20)
    texts = [t for _, t in corpus.train]
    prefix = str(tmp_path / "vocab.tgt")
    vocab = data_lib.build_or_load_vocab(prefix, texts, 300)
    assert os.path.exists(prefix + ".subwords")
    for text in [t for _, t in corpus.eval] + ["Olá, mundo! Ça va?  x\u00e7\u4e16 123.", "Zorak."]:
        ids = vocab.encode(text)
        assert ids[-1] == vocab.eos_id and all(0 < i < vocab.eos_id for i in ids[:-1])
        assert vocab.decode(ids) == text
    reloaded = data_lib.build_or_load_vocab(prefix, iter(()), 300)  # from the cache
    assert reloaded.encode(texts[0]) == vocab.encode(texts[0])
    assert reloaded.size == vocab.size == vocab.encoder.vocab_size + 2


def test_bleu_identical_is_100_and_cased_vs_uncased():
    refs = ["Karu lu wa natokoresh.", "Mukit royaak zo Lehun hen koryak.", "A b c d e f."]
    assert decoding.bleu(refs, refs) == pytest.approx((100.0, 100.0))
    lowered = [r.lower() for r in refs]
    cased, uncased = decoding.bleu(lowered, refs)
    assert uncased == pytest.approx(100.0) and cased < 90.0


# ------------------------------------------------------------ batching, hparams
def test_batch_schedule_is_resumable_and_covers_each_epoch():
    rng = np.random.default_rng(0)
    src = [rng.integers(1, 50, rng.integers(2, 30)).astype(np.int32) for _ in range(300)]
    tgt = [rng.integers(1, 50, rng.integers(2, 30)).astype(np.int32) for _ in range(300)]
    sched = data_lib.BatchSchedule(src, tgt, batch_tokens=128, max_len=25, seed=3)
    assert sched.dropped > 0
    n0 = len(sched.epoch_batches(0))
    seen = np.concatenate(sched.epoch_batches(0))
    assert sorted(seen.tolist()) == list(range(len(sched)))
    full = [b for _, b in zip(range(n0 + 7), sched.iterate(0))]
    for start in (0, 5, n0 - 1, n0 + 3):
        k, s, t = next(sched.iterate(start))
        assert k == start and np.array_equal(s, full[start][1]) and np.array_equal(t, full[start][2])
        assert s.shape[0] * max(s.shape[1], t.shape[1]) <= 128 or s.shape[0] == 1
    shard = [k for k, _, _ in (b for _, b in zip(range(6), sched.iterate(4, shard=1, num_shards=2)))]
    assert shard == [5, 7, 9, 11, 13, 15]


def test_hparams_overrides_and_errors():
    hp = models.get_hparams("transformer_base", "layers=3,hidden=256,dropout=0.3,tie_embeddings=false")
    assert (hp["layers"], hp["d_model"], hp["dropout"], hp["tie_embeddings"]) == (3, 256, 0.3, False)
    assert models.get_hparams("transformer_base")["d_model"] == 512
    assert models.get_hparams("lstm")["layers"] == 4 and models.get_hparams("lstm")["d_model"] == 1024
    with pytest.raises(ValueError, match="unknown hparam"):
        models.get_hparams("transformer_tiny", "nope=1")
    with pytest.raises(ValueError, match="divisible"):
        models.get_hparams("transformer_tiny", "heads=3")


def test_warmup_rsqrt_schedule():
    s = optim.WarmupRsqrt(1e-3, 100)
    vals = [float(s(step)) for step in (0, 49, 99, 399)]
    assert vals[0] == pytest.approx(1e-5) and vals[1] == pytest.approx(5e-4)
    assert vals[2] == pytest.approx(1e-3) and vals[3] == pytest.approx(5e-4)


# ----------------------------------------------------------- end-to-end paths
def _expectigrad_slots(trainer):
    opt = translate._inner(trainer.optimizer)
    return {v.path: v.numpy().copy() for v in opt.variables}


def test_end_to_end_interrupt_and_resume_restores_optimizer_state(tmp_path):
    out = tmp_path / "run"
    first = translate.run(_argv(out, *SMALL_DATA, steps=4, every=2))
    assert int(first.step.numpy()) == 4
    saved = _expectigrad_slots(first)
    names = "".join(saved)
    states = [v for k, v in saved.items() if k.endswith("_state")]
    assert states and "_sum" not in names  # one packed state per variable
    assert all(v.shape[0] == 3 for v in states)  # sum, count, momentum
    assert sorted(os.listdir(out / "checkpoints"))[0] == "checkpoint"
    assert [r["step"] for r in _eval_records(out)] == [2, 4]

    # "Restart" with more steps: state comes back from the checkpoint.
    second = translate.Trainer(translate.parse_args(_argv(out, *SMALL_DATA, steps=6, every=2))).setup()
    assert second.restored_from.endswith("ckpt-4")
    assert int(second.step.numpy()) == 4
    restored = _expectigrad_slots(second)
    assert len(restored) == len(saved)
    for (_, a), (_, b) in zip(sorted(saved.items()), sorted(restored.items())):
        np.testing.assert_array_equal(a, b)
    for va, vb in zip(first.model.trainable_variables, second.model.trainable_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    second.train()
    assert int(second.step.numpy()) == 6
    assert int(translate._inner(second.optimizer).iterations.numpy()) == 6
    records = _eval_records(out)
    assert [r["step"] for r in records] == [2, 4, 6]
    for rec in records:
        _check_record(rec)
    # eval.json / config.json: indent 1, a final newline, no temporary file left
    assert (out / "eval.json").read_text() == json.dumps(records, indent=1) + "\n"
    config = json.loads((out / "config.json").read_text())
    assert (out / "config.json").read_text() == json.dumps(config, indent=1) + "\n"
    assert config["args"]["optimizer"] == "expectigrad" and config["args"]["train_steps"] == 6
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    with open(out / "decodes" / "step_6.txt") as f:
        assert len(f.read().splitlines()) == 12
    assert os.listdir(out / "tb")



def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """Same batches and the same dropout RNG state after a restart."""
    import shutil

    import tensorflow as tf

    straight = translate.run(_argv(tmp_path / "straight", *SMALL_DATA, "--no-eval", steps=6, every=3))
    # A copy of the output dir as it was after step 3, then restarted.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed_dir,
                    ignore=shutil.ignore_patterns("ckpt-6*", "checkpoint"))
    tf.compat.v1.train.update_checkpoint_state(str(resumed_dir / "checkpoints"), "ckpt-3")
    resumed = translate.Trainer(translate.parse_args(
        _argv(resumed_dir, *SMALL_DATA, "--no-eval", steps=6, every=3))).setup()
    assert int(resumed.step.numpy()) == 3
    resumed.train()
    for va, vb in zip(resumed.model.trainable_variables, straight.model.trainable_variables):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-5, atol=1e-6)
    for va, vb in zip(translate._inner(resumed.optimizer).variables,
                      translate._inner(straight.optimizer).variables):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-5, atol=1e-6)


def test_text_file_problem(tmp_path):
    corpus = synthetic.generate_corpus(seed=4, n_train=300, n_eval=10)
    paths = {}
    for split, pairs in (("train", corpus.train), ("eval", corpus.eval)):
        for side, idx in (("src", 0), ("tgt", 1)):
            p = tmp_path / f"{split}.{side}"
            p.write_text("".join(pair[idx] + "\n" for pair in pairs), encoding="utf-8")
            paths[f"--{split}-{side}"] = str(p)
    argv = _argv(tmp_path / "out", *sum(([k, v] for k, v in paths.items()), []), steps=2)
    trainer = translate.run(argv)
    assert trainer.data_info["problem"] == "text_files"
    assert trainer.data_info["train_pairs"] == 300 and trainer.eval_refs == [t for _, t in corpus.eval]
    _check_record(_eval_records(tmp_path / "out")[-1])

    # Misaligned files are an error.
    (tmp_path / "bad.tgt").write_text("one\n", encoding="utf-8")
    bad = dict(paths, **{"--train-tgt": str(tmp_path / "bad.tgt")})
    with pytest.raises(ValueError, match="lines"):
        translate.run(_argv(tmp_path / "bad", *sum(([k, v] for k, v in bad.items()), [])))


def test_tfds_problem_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    name = "ted_hrlr_translate/pt_to_en"
    with tfds.testing.mock_data(num_examples=24):
        args = translate.parse_args(_argv(tmp_path / "out", "--problem", name,
                                          "--data-dir", str(tmp_path / "tfds")))
        train, evals, info = data_lib.load_problem(args)
        assert (info["source"], info["target"]) == ("pt", "en")
        assert len(train) == 24 and len(evals) == 24
        ds = tfds.load(name, split="train", data_dir=str(tmp_path / "tfds"), download=False)
        first = next(iter(tfds.as_numpy(ds)))
        assert train[0] == (first["pt"].decode().strip(), first["en"].decode().strip())

        rev = translate.parse_args(_argv(tmp_path / "rev", "--problem", name, "--reverse",
                                         "--max-eval-examples", "5"))
        _, evals_rev, info_rev = data_lib.load_problem(rev)
        assert (info_rev["source"], info_rev["target"]) == ("en", "pt") and len(evals_rev) == 5

        trainer = translate.run(_argv(tmp_path / "out", "--problem", name,
                                      "--data-dir", str(tmp_path / "tfds"), steps=2))
    assert trainer.data_info["problem"] == name
    _check_record(_eval_records(tmp_path / "out")[-1])

    # Without mocking, an unprepared dataset is an error that says so: nothing is downloaded.
    with pytest.raises(SystemExit, match="never downloads"):
        data_lib.load_problem(translate.parse_args(
            _argv(tmp_path / "none", "--problem", name, "--data-dir", str(tmp_path / "empty"))))


def test_lstm_with_beam_search(tmp_path):
    trainer = translate.run(_argv(tmp_path, *SMALL_DATA, "--beam-size", "3", "--optimizer", "amsgrad",
                                  model="lstm", hparams=TINY.replace(",heads=2,ff=64", "")))
    assert isinstance(trainer.model, models.LSTMSeq2Seq)
    rec = _eval_records(tmp_path)[-1]
    _check_record(rec)
    assert rec["beam_size"] == 3 and rec["optimizer"] == "amsgrad"


def test_beam_search_finds_the_greedy_path_or_better(tmp_path):
    trainer = translate.run(_argv(tmp_path, *SMALL_DATA, "--no-eval", steps=3))
    src = trainer.eval_src[:6]
    greedy = decoding.Decoder(trainer.model, trainer.tgt_vocab.bos_id, trainer.tgt_vocab.eos_id,
                              max_decode_len=12).decode_ids(src)
    beam1 = decoding.Decoder(trainer.model, trainer.tgt_vocab.bos_id, trainer.tgt_vocab.eos_id,
                             max_decode_len=12, beam_size=1).decode_ids(src)
    beam4 = decoding.Decoder(trainer.model, trainer.tgt_vocab.bos_id, trainer.tgt_vocab.eos_id,
                             max_decode_len=12, beam_size=4).decode_ids(src)
    assert greedy == beam1 and len(beam4) == len(src)
    assert all(0 < t < trainer.tgt_vocab.eos_id for seq in beam4 for t in seq)


@pytest.mark.parametrize("optimizer", ["adam", "yogi", "adafactor"])
def test_baseline_optimizers_train(tmp_path, optimizer):
    trainer = translate.run(_argv(tmp_path, *SMALL_DATA, "--optimizer", optimizer, "--no-eval",
                                  "--schedule", "warmup_rsqrt", "--warmup-steps", "10"))
    assert int(translate._inner(trainer.optimizer).iterations.numpy()) == 2


def test_mixed_precision_and_mirrored_strategy(tmp_path):
    import keras

    trainer = translate.run(_argv(tmp_path, *SMALL_DATA, "--mixed-precision", "--strategy", "mirrored"))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.model.src_embed.compute_dtype == "float16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    _check_record(_eval_records(tmp_path)[-1])
    # Resume under the same strategy restores the loss scale optimizer too.
    again = translate.Trainer(translate.parse_args(_argv(
        tmp_path, *SMALL_DATA, "--mixed-precision", "--strategy", "mirrored", "--no-eval", steps=3))).setup()
    assert int(again.step.numpy()) == 2
    again.train()
    assert int(again.step.numpy()) == 3


def test_changed_model_shape_in_same_output_dir_is_refused(tmp_path):
    translate.run(_argv(tmp_path, *SMALL_DATA, "--no-eval", steps=1, every=1))
    with pytest.raises(SystemExit, match="d_model"):
        translate.run(_argv(tmp_path, *SMALL_DATA, steps=2, hparams=TINY.replace("d_model=32", "d_model=64")))


# ----------------------------------------------------------------- plot
def test_plot_collects_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from expectigrad_experiments.translate import plot

    runs = []
    for opt, scale in (("expectigrad", 1.0), ("adam", 0.5)):
        run = tmp_path / f"run_{opt}"
        run.mkdir()
        records = [{"step": s, "bleu_cased": 10.0 * scale * s, "bleu_uncased": 11.0 * scale * s,
                    "loss": 3.0 / s, "optimizer": opt} for s in (1, 2)]
        (run / "eval.json").write_text(json.dumps(records, indent=1) + "\n")
        runs.append(str(run))
    png = tmp_path / "fig" / "bleu.png"
    assert plot.main(runs + ["--out", str(png), "--copy-json", str(tmp_path / "copied"),
                             "--prefix", "t_"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "copied")) == ["t_adam_eval.json", "t_expectigrad_eval.json"]
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| step | expectigrad | adam |"
    assert table[-1] == "| 2 | 20.00 / 22.00 / 1.500 | 10.00 / 11.00 / 1.500 |"
