"""The translation trainer (``expectigrad-translate``).

* ``trainer``: the training loop, checkpoints, resume, BLEU at each
  checkpoint, and the command line (``main``);
* ``synthetic``: the generated Avek -> Tirun corpus;
* ``data``: problems (synthetic, TFDS, local files), subword vocabularies,
  token-bucketed batches;
* ``models``: Transformer and attentional LSTM;
* ``decoding``: greedy / beam decoding (incremental, with the models' caches) and BLEU;
* ``inference``: the ``decode``, ``export`` and ``benchmark-decode`` subcommands;
* ``serving``: the loader of an export (TensorFlow + standard library only;
  copied into each export directory);
* ``plot``: BLEU over steps from several runs' ``eval.json``.

The optimizers come from ``expectigrad_experiments.optimizers``
(``make_translation_optimizer``). ``python -m expectigrad_experiments.translate``
runs the trainer.
"""
