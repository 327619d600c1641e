"""Helpers of scripts/translate.py: synthetic corpus, data and vocabularies,
models, decoding and BLEU, optimizers. See scripts/translate.py."""
