"""Tests of incremental (cached) decoding, post-norm Transformers and the
``expectigrad-translate decode`` / ``export`` / ``benchmark-decode`` commands,
with tiny models trained for a few dozen steps."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_experiments.translate import decoding, inference, models, serving
from expectigrad_experiments.translate import trainer as translate

TINY = "layers=2,d_model=32,heads=2,ff=64,batch_size=512,vocab_size=300,max_len=48,max_decode_len=40"
DATA = ["--synthetic-train-size", "600", "--synthetic-eval-size", "16"]
STEPS = 120


def _argv(out, *extra, steps=STEPS, hparams=TINY, model="transformer_tiny"):
    return ["--output-dir", str(out), "--model", model, "--hparams", hparams, "--train-steps", str(steps),
            "--checkpoint-every", str(steps), "--verbose", "0", "--lr", "3e-3", *DATA, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pre-norm Transformer trained for STEPS steps (with one evaluation at the end)."""
    out = tmp_path_factory.mktemp("run")
    return translate.run(_argv(out))


def _decoders(model, vocab, beam, max_len=40):
    return [decoding.Decoder(model, vocab.bos_id, vocab.eos_id, max_len, beam, 0.6, cached=c)
            for c in (True, False)]


# ------------------------------------------------------------- incremental decoding
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")  # one cached key at step 0
@pytest.mark.parametrize("arch,extra", [("transformer_tiny", ""), ("transformer_tiny", ",layer_norm=post"),
                                        ("lstm", "")])
def test_cached_step_logits_equal_full_decoder(arch, extra):
    """Teacher-forced: decode_step at each position gives the full decoder's logits there."""
    import keras

    hp = models.get_hparams(arch, (TINY if arch != "lstm" else TINY.replace(",heads=2,ff=64", "")) + extra)
    keras.utils.set_random_seed(3)
    model = models.build_model(hp, 57, 61)
    rng = np.random.default_rng(0)
    src = rng.integers(1, 57, (3, 9)).astype(np.int32)
    src[1, 6:] = 0  # padding
    tgt = rng.integers(1, 61, (3, 7)).astype(np.int32)
    memory = model.encode(tf.constant(src))
    full = model.decode(memory, tf.constant(tgt)).numpy()
    context, cache = model.start_decoding(memory)
    for i in range(tgt.shape[1]):
        logits, cache = model.decode_step(context, cache, tf.constant(tgt[:, i]), i)
        np.testing.assert_allclose(logits.numpy(), full[:, i], rtol=1e-4, atol=1e-4)
    if arch.startswith("transformer"):
        assert cache["k0"].shape[2] == tgt.shape[1]  # one cached key per position


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_and_uncached_decoding_give_the_same_tokens(trained, beam):
    cached, uncached = _decoders(trained.model, trained.tgt_vocab, beam)
    a = cached.decode_ids(trained.eval_src, batch_size=5)
    b = uncached.decode_ids(trained.eval_src, batch_size=5)
    assert a == b
    # Not a degenerate comparison: the model stops (EOS) and writes varied tokens.
    assert sum(len(x) < 40 for x in a) >= len(a) // 2
    assert len({t for x in a for t in x}) >= 10


def test_cached_lstm_beam_equals_uncached():
    import keras

    hp = models.get_hparams("lstm", TINY.replace(",heads=2,ff=64", ""))
    keras.utils.set_random_seed(5)
    model = models.build_model(hp, 40, 30)
    src = [np.random.default_rng(i).integers(1, 38, 4 + i).astype(np.int32) for i in range(6)]
    for beam in (1, 3):
        c, u = (decoding.Decoder(model, 29, 28, 12, beam, 0.6, cached=x) for x in (True, False))
        assert c.decode_ids(src, 4) == u.decode_ids(src, 4)


def test_decoder_rejects_bad_settings(trained):
    vocab = trained.tgt_vocab
    with pytest.raises(ValueError, match="beam_size.*0"):
        decoding.Decoder(trained.model, vocab.bos_id, vocab.eos_id, beam_size=0)
    with pytest.raises(ValueError, match="alpha.*-1"):
        decoding.Decoder(trained.model, vocab.bos_id, vocab.eos_id, alpha=-1.0)


# --------------------------------------------------------------------- post-norm
def test_post_norm_transformer(tmp_path):
    hp = models.get_hparams("transformer_tiny", TINY + ",layer_norm=post")
    model = models.build_model(hp, 30, 30)
    assert model.enc_norm is None and model.dec_norm is None
    pre = models.build_model(models.get_hparams("transformer_tiny", TINY), 30, 30)
    assert len(pre.trainable_variables) == len(model.trainable_variables) + 4  # the two final norms
    with pytest.raises(ValueError, match="layer_norm='side'"):
        models.get_hparams("transformer_tiny", "layer_norm=side")
    # Trains, and the output dir refuses a resume with the other layout.
    out = tmp_path / "post"
    trainer = translate.run(_argv(out, "--no-eval", steps=2, hparams=TINY + ",layer_norm=post"))
    assert int(trainer.step.numpy()) == 2
    with pytest.raises(SystemExit, match="layer_norm"):
        translate.run(_argv(out, "--no-eval", steps=3))
    # A config.json from before layer_norm existed counts as pre-norm.
    assert models.complete_hparams({"arch": "transformer", "layers": 1})["layer_norm"] == "pre"
    assert "layer_norm" not in models.complete_hparams({"arch": "lstm"})


# ------------------------------------------------------------------- decode command
def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_decode_reproduces_the_evaluation_and_handles_odd_lines(trained, tmp_path, capsys):
    out_dir = trained.out
    eval_src = serving.read_lines(os.path.join(out_dir, "data", "eval.src"))
    eval_tgt = serving.read_lines(os.path.join(out_dir, "data", "eval.tgt"))
    # 1. The eval set: the same translations as the trainer's evaluation at that checkpoint
    #    (same batches: 64 sentences sorted by length; nothing truncated by default).
    out = tmp_path / "out.txt"
    assert translate.main(["decode", "--output-dir", out_dir, "--input", os.path.join(out_dir, "data", "eval.src"),
                           "--output", str(out), "--reference", os.path.join(out_dir, "data", "eval.tgt")]) == 0
    with open(os.path.join(out_dir, "decodes", f"step_{STEPS}.txt"), encoding="utf-8") as f:
        expected = f.read().splitlines()
    assert serving.read_lines(str(out)) == expected
    bleu_line = capsys.readouterr().out.strip().splitlines()[-1]
    cased, uncased = decoding.bleu(expected, eval_tgt)
    assert bleu_line.startswith(f"BLEU cased {cased:.2f} uncased {uncased:.2f}")
    # 2. Empty lines, an over-long line, unknown characters; stdin -> stdout.
    long_line = " ".join(eval_src[:6])
    short = sorted(range(len(eval_src)), key=lambda i: len(eval_src[i]))[:2]
    lines = [eval_src[short[0]], "", "   ", long_line, "Ka \u4e16\u754c doku \u00e7a.", eval_src[short[1]]]
    import io

    sys_stdin = sys.stdin
    sys.stdin = io.StringIO("".join(line + "\n" for line in lines))
    try:
        assert translate.main(["decode", "--output-dir", out_dir, "--input", "-", "--output", "-",
                               "--max-source-len", "20"]) == 0
    finally:
        sys.stdin = sys_stdin
    captured = capsys.readouterr()
    got = captured.out.splitlines()
    assert len(got) == len(lines)
    assert got[1] == "" and got[2] == ""
    assert got[0] == expected[short[0]] and got[5] == expected[short[1]]
    assert got[3] and got[4]
    assert "line 4 has" in captured.err and "truncated to max_source_len=20" in captured.err
    assert "line 1 has" not in captured.err
    assert "characters that no source subword contains" in captured.err and "lines 5" in captured.err


def test_decode_beam_and_checkpoint_choice(trained, tmp_path):
    out_dir = trained.out
    src = os.path.join(out_dir, "data", "eval.src")
    outputs = {}
    for flag in ("cached", "no-cache"):
        path = tmp_path / f"{flag}.txt"
        extra = ["--no-cache"] if flag == "no-cache" else []
        translate.main(["decode", "--output-dir", out_dir, "--input", src, "--output", str(path),
                        "--beam-size", "3", "--alpha", "1.0", "--checkpoint", str(STEPS), "--quiet", *extra])
        outputs[flag] = serving.read_lines(str(path))
    assert outputs["cached"] == outputs["no-cache"]
    ids = inference.RunFiles(out_dir).decoder(3, 1.0).decode_ids(trained.eval_src, 64)
    assert outputs["cached"] == [trained.tgt_vocab.decode(x) for x in ids]


def test_decode_errors_name_the_argument(trained, tmp_path):
    good = _write(tmp_path / "in.txt", ["Ka doku."])

    def fails(argv, *needles):
        with pytest.raises(SystemExit) as e:
            translate.main(argv)
        for needle in needles:
            assert needle in str(e.value), (needle, str(e.value))

    fails(["decode", "--output-dir", str(tmp_path / "nope"), "--input", good], "--output-dir", "nope")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    fails(["decode", "--output-dir", str(empty), "--input", good], "--output-dir", "config.json")
    # A run directory without vocabulary / without checkpoint.
    import shutil

    no_vocab = tmp_path / "no_vocab"
    shutil.copytree(trained.out, no_vocab)
    os.remove(no_vocab / "vocab.tgt.subwords")
    fails(["decode", "--output-dir", str(no_vocab), "--input", good], "vocab.tgt.subwords")
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(trained.out, no_ckpt, ignore=shutil.ignore_patterns("checkpoints"))
    fails(["decode", "--output-dir", str(no_ckpt), "--input", good], "no checkpoint", "no_ckpt")
    fails(["decode", "--output-dir", trained.out, "--input", good, "--checkpoint", "7"],
          "--checkpoint '7'", f"ckpt-{STEPS}")
    fails(["decode", "--output-dir", trained.out, "--input", str(tmp_path / "missing.txt")],
          "--input", "missing.txt")
    two = _write(tmp_path / "two.txt", ["a", "b"])
    fails(["decode", "--output-dir", trained.out, "--input", good, "--reference", two],
          "--reference", "2 lines", "1")
    with pytest.raises(SystemExit):
        translate.main(["decode", "--output-dir", trained.out, "--input", good, "--beam-size", "0"])
    with pytest.raises(SystemExit):
        translate.main(["decode", "--output-dir", trained.out, "--input", good, "--alpha", "nan"])


# ---------------------------------------------------------------------------- export
def test_export_serves_the_decode_output_in_a_fresh_process(trained, tmp_path):
    out_dir = trained.out
    src = serving.read_lines(os.path.join(out_dir, "data", "eval.src"))
    inp = _write(tmp_path / "in.txt", src[:10] + ["", " ".join(src[:6]), "Ka \u4e16 doku."])
    decoded = tmp_path / "decoded.txt"
    args = ["--output-dir", out_dir, "--beam-size", "2", "--max-source-len", "24"]
    translate.main(["decode", *args, "--input", inp, "--output", str(decoded), "--quiet"])
    export_dir = tmp_path / "export"
    assert translate.main(["export", *args, "--export-dir", str(export_dir)]) == 0
    assert sorted(os.listdir(export_dir)) == ["saved_model", "serving.py", "translate.json",
                                             "vocab.src.subwords", "vocab.tgt.subwords"]
    meta = json.loads((export_dir / "translate.json").read_text())
    assert meta["beam_size"] == 2 and meta["step"] == STEPS and meta["max_source_len"] == 24

    # A fresh interpreter, from another directory, with the exported serving.py only.
    served = tmp_path / "served.txt"
    env = dict(os.environ, PYTHONPATH="")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import serving\n"
        "rc = serving.main([sys.argv[1], '--input', sys.argv[2], '--output', sys.argv[3]])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('expectigrad_experiments', 'expectigrad_tf', 'tensorflow_datasets'))\n"
        "assert not bad, bad\n"
        "print('serving module:', serving.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(export_dir), inp, str(served)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(export_dir / "serving.py") in proc.stdout
    assert serving.read_lines(str(served)) == serving.read_lines(str(decoded))
    assert "line 12 has" in proc.stderr  # the truncation warning
    # An export directory that is not empty is refused.
    with pytest.raises(SystemExit, match="--export-dir"):
        translate.main(["export", *args, "--export-dir", str(export_dir)])


def test_subword_encoder_matches_tensorflow_datasets(trained):
    import tensorflow_datasets as tfds

    rng = random.Random(0)
    alphabet = "abcKLu .,!?-_\\&undsc\u00e7\u4e16\u00e9\t019"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
             for _ in range(400)]
    texts += serving.read_lines(os.path.join(trained.out, "data", "eval.tgt"))
    texts += ["\\&undsc", "a \\&undsc b", "_", "a_b _ c__", "  lead  trail  ", ""]
    for side in ("src", "tgt"):
        prefix = os.path.join(trained.out, f"vocab.{side}")
        ref = tfds.deprecated.text.SubwordTextEncoder.load_from_file(prefix)
        mine = serving.SubwordEncoder.load(prefix + ".subwords")
        assert mine.vocab_size == ref.vocab_size
        for text in texts:
            ids = ref.encode(text)
            assert mine.encode(text) == ids, text
            assert mine.decode(ids) == ref.decode(ids), text
    with pytest.raises(ValueError, match="not a SubwordTextEncoder"):
        serving.load_subwords(os.path.join(trained.out, "config.json"))


# ------------------------------------------------------------------ CLI, benchmark
def test_train_subcommand_and_no_subcommand_both_train(tmp_path):
    for name, prefix in (("plain", []), ("sub", ["train"])):
        assert translate.main(prefix + _argv(tmp_path / name, "--no-eval", steps=1)) == 0
        assert os.path.exists(tmp_path / name / "checkpoints" / "ckpt-1.index")


def test_benchmark_decode_reports_both_paths(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert translate.main(["benchmark-decode", "--model", "transformer_tiny", "--hparams", TINY,
                           "--sentences", "6", "--min-tokens", "12", "--decode-len", "10",
                           "--batch-size", "3", "--repeats", "1", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["sentences"] == 6 and report["source_tokens_min"] >= 12
    assert report["identical_outputs"] is True
    assert report["cached_median"] > 0 and report["uncached_median"] > 0
    assert "speedup" in capsys.readouterr().out


def test_plot_labels(tmp_path):
    pytest.importorskip("matplotlib")
    from expectigrad_experiments.translate import plot

    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        (run / "eval.json").write_text(json.dumps(
            [{"step": 1, "bleu_cased": 1.0, "bleu_uncased": 1.0, "loss": 2.0, "optimizer": "adam"}]))
        runs.append(str(run))
    assert plot.main(runs + ["--out", str(tmp_path / "p.png"), "--labels", "adam, adam+warmup",
                             "--copy-json", str(tmp_path / "c")]) == 0
    assert sorted(os.listdir(tmp_path / "c")) == ["adam+warmup_eval.json", "adam_eval.json"]
    with pytest.raises(SystemExit):
        plot.main(runs + ["--out", str(tmp_path / "q.png"), "--labels", "only-one"])
