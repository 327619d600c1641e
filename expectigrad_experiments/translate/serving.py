"""Translate strings with a model exported by ``expectigrad-translate export``.

This file needs only TensorFlow and the Python standard library: it does not
import the training code (``expectigrad-translate export`` copies it into the
export directory, so it works where this package is not installed)::

    python EXPORT_DIR/serving.py EXPORT_DIR --input src.txt --output out.txt
    echo "Ka doku visar ruvupok ta bafii." | python EXPORT_DIR/serving.py EXPORT_DIR

    # from Python: `import serving` with PYTHONPATH=EXPORT_DIR (the copy in the
    # export), or where this package is installed:
    from expectigrad_experiments.translate import serving
    translator = serving.Translator(EXPORT_DIR)
    translator.translate(["Ka doku visar ruvupok ta bafii."])   # -> list of strings

An export directory holds:

* ``saved_model/``: a SavedModel whose ``serving_default`` signature maps
  ``source_ids`` (int32 ``[batch, length]``, ``0`` = padding, each row ending
  with the source end-of-sentence id) to ``output_ids`` (int32
  ``[batch, length']``: each row's tokens, then end-of-sentence, then
  ``0``\\ s); the search (greedy or beam, its size and length penalty) was
  fixed at export time and is recorded in ``translate.json``;
* ``vocab.src.subwords`` / ``vocab.tgt.subwords``: the run's subword
  vocabularies (tensorflow-datasets ``SubwordTextEncoder`` files);
* ``translate.json``: the ids of the special symbols, the maximum source
  length, the decoding settings and where the model came from;
* ``serving.py``: this file.

Token ids, as in training: ``0`` is padding, ``1 .. V-1`` the subwords (and
the 256 byte fallbacks that encode characters the vocabulary lacks), ``V`` is
end-of-sentence, where ``V`` is the subword encoder's vocabulary size.

``SubwordEncoder`` re-implements the encoding and decoding of
``tfds.deprecated.text.SubwordTextEncoder`` (greedy longest-match subwords,
byte fallback for unknown characters), so that no tensorflow-datasets
install is needed here. One deliberate difference: where two reserved
(mixed alphanumeric) subwords overlap, the longer wins, where
tensorflow-datasets picks whichever its set iteration lists first (which
varies between processes).
"""

import argparse
import json
import os
import re
import sys

__all__ = ["SubwordEncoder", "Translator", "load_subwords", "read_lines", "write_lines", "encode_line", "main"]

_UNDERSCORE = "\\&undsc"
_ALL_REGEX = re.compile(r"(\W+)", flags=re.UNICODE)
NUM_BYTES = 256
DEFAULT_BATCH_SIZE = 64


def load_subwords(path):
    """The subword list of a ``.subwords`` file written by ``SubwordTextEncoder.save_to_file``."""
    with open(path, "rb") as f:
        lines = [line.decode("utf-8")[:-1] for line in f]
    if not lines or lines[0] != "### SubwordTextEncoder":
        raise ValueError(f"{path} is not a SubwordTextEncoder vocabulary (first line {lines[:1]!r})")
    return [line[1:-1] for line in lines[2:]]


def _is_mixed_alphanum(token):
    return len([s for s in _ALL_REGEX.split(token) if s]) > 1


class SubwordEncoder:
    """Encodes text to subword ids and back, as ``SubwordTextEncoder`` does.

    ``encode`` returns ids in ``1 .. vocab_size - 1`` (``0`` is padding);
    ``vocab_size`` is ``1 + len(subwords) + 256``.
    """

    def __init__(self, subwords):
        self.subwords = [s for s in subwords if s]
        self._ids = {s: i for i, s in enumerate(self.subwords)}
        self._max_len = max(len(_UNDERSCORE), max((len(s) for s in self.subwords), default=1))
        reserved = {_UNDERSCORE} | {s for s in self.subwords if _is_mixed_alphanum(s)}
        self._reserved = reserved
        pattern = "|".join(re.escape(t) for t in sorted(reserved, key=lambda t: (-len(t), t)))
        self._reserved_re = re.compile(f"({pattern})", flags=re.UNICODE)

    @classmethod
    def load(cls, path):
        return cls(load_subwords(path))

    @property
    def vocab_size(self):
        return 1 + len(self.subwords) + NUM_BYTES

    # ----------------------------------------------------------------- encode
    def _tokenize(self, text):
        toks = []
        for sub in self._reserved_re.split(text):
            if sub in self._reserved:
                toks.append(sub)
            else:
                toks.extend(_ALL_REGEX.split(sub))
        return [t for t in toks if t]

    @staticmethod
    def _prepare(tokens):
        out = []
        nxt = tokens[1:] + [None]
        skip = False
        for tok, following in zip(tokens, nxt):
            if skip:
                skip = False
                continue
            if tok == _UNDERSCORE:  # a literal "\&undsc" in the input: two tokens
                # (as in tensorflow-datasets, a following space stays a token of its own)
                out.append(tok[:2])
                out.append(tok[2:] + ("_" if following == " " else ""))
                continue
            tok = tok.replace("_", _UNDERSCORE)
            if following == " ":
                tok += "_"
                skip = True
            out.append(tok)
        return out

    def _split(self, token):
        subwords, start = [], 0
        while start < len(token):
            for end in range(min(len(token), start + self._max_len), start, -1):
                cand = token[start:end]
                if cand in self._ids or cand == _UNDERSCORE:
                    subwords.append(cand)
                    start = end
                    break
            else:
                subwords.append(token[start])
                start += 1
        return subwords

    def _byte_ids(self, piece):
        offset = len(self.subwords)
        if piece == "_":
            return [offset + ord(" ")]
        return [offset + b for b in piece.encode("utf-8")]

    def encode(self, text):
        ids = []
        for token in self._prepare(self._tokenize(text)):
            for piece in self._split(token):
                if piece == _UNDERSCORE:
                    ids.append(len(self.subwords) + ord("_"))
                elif piece in self._ids:
                    ids.append(self._ids[piece])
                else:
                    ids.extend(self._byte_ids(piece))
        return [i + 1 for i in ids]

    # ----------------------------------------------------------------- decode
    def decode(self, ids):
        ids = [int(i) for i in ids]
        while ids and not ids[-1]:
            ids.pop()
        out, pending = [], []

        def flush():
            if pending:
                out.append(b"".join(pending).decode("utf-8", "replace"))
                pending.clear()

        for i in ids:
            i -= 1
            if not 0 <= i < self.vocab_size - 1:
                raise ValueError(f"id {i + 1} is outside [1, {self.vocab_size})")
            if i < len(self.subwords):
                flush()
                piece = self.subwords[i]
                if piece.endswith("_"):
                    out.append(piece[:-1])
                    out.append(" ")
                else:
                    out.append(piece)
            else:
                pending.append(bytes([i - len(self.subwords)]))
        flush()
        return "".join(out)


def read_lines(path):
    """Lines of a UTF-8 text file or of standard input (``-``), without line ends."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def write_lines(path, lines):
    """Writes one line per string to a file or to standard output (``-``)."""
    text = "".join(line + "\n" for line in lines)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def encode_line(encode, line, eos_id, max_source_len, warn, line_number=None):
    """``encode(line.strip()) + [eos_id]``, truncated to ``max_source_len`` ids
    (EOS kept last) with a message to ``warn`` when it is longer."""
    ids = list(encode(line.strip()))
    if len(ids) + 1 > max_source_len:
        where = f"line {line_number}" if line_number is not None else "a line"
        warn(f"[warning] {where} has {len(ids) + 1} source tokens; truncated to "
             f"max_source_len={max_source_len}")
        ids = ids[: max_source_len - 1]
    return ids + [eos_id]


class Translator:
    """Loads an export directory; ``translate(lines)`` returns one translation per line.

    ``warn`` (default: print to stderr) receives one message per source line
    longer than the export's ``max_source_len`` tokens (it is truncated).
    Empty lines translate to empty lines without running the model.
    """

    def __init__(self, export_dir, warn=None):
        import tensorflow as tf

        self.tf = tf
        self.export_dir = export_dir
        meta_path = os.path.join(export_dir, "translate.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{export_dir!r} is not an export directory: no translate.json")
        with open(meta_path, encoding="utf-8") as f:
            self.meta = json.load(f)
        self.src = SubwordEncoder.load(os.path.join(export_dir, "vocab.src.subwords"))
        self.tgt = SubwordEncoder.load(os.path.join(export_dir, "vocab.tgt.subwords"))
        if self.src.vocab_size != self.meta["src_eos_id"] or self.tgt.vocab_size != self.meta["tgt_eos_id"]:
            raise ValueError(f"{export_dir}: the vocabularies do not match translate.json")
        self.max_source_len = int(self.meta["max_source_len"])
        self._loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
        self._serve = self._loaded.signatures["serving_default"]
        self.warn = warn if warn is not None else (lambda msg: print(msg, file=sys.stderr))

    def encode(self, line, line_number=None):
        """Source ids of one line (truncated to ``max_source_len`` tokens, EOS included)."""
        return encode_line(self.src.encode, line, self.meta["src_eos_id"], self.max_source_len,
                           self.warn, line_number)

    def translate_ids(self, sources, batch_size=DEFAULT_BATCH_SIZE):
        """Output id lists (EOS and padding removed) of source id lists, batched by length."""
        tf = self.tf
        eos = self.meta["tgt_eos_id"]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        out = [None] * len(sources)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(sources[j]) for j in idx)
            batch = [sources[j] + [0] * (width - len(sources[j])) for j in idx]
            ids = self._serve(source_ids=tf.constant(batch, tf.int32))["output_ids"].numpy()
            for row, j in zip(ids.tolist(), idx):
                seq = []
                for t in row:
                    if t == eos:
                        break
                    if t:
                        seq.append(t)
                out[j] = seq
        return out

    def translate(self, lines, batch_size=DEFAULT_BATCH_SIZE):
        lines = list(lines)
        keep = [i for i, line in enumerate(lines) if line.strip()]
        ids = self.translate_ids([self.encode(lines[i], i + 1) for i in keep], batch_size)
        out = [""] * len(lines)
        for i, seq in zip(keep, ids):
            out[i] = self.tgt.decode(seq)
        return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="serving.py", description=__doc__.splitlines()[0])
    p.add_argument("export_dir", help="an expectigrad-translate export directory")
    p.add_argument("--input", default="-", help="source text, one sentence per line ('-' = stdin)")
    p.add_argument("--output", default="-", help="where to write the translations ('-' = stdout)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    translator = Translator(args.export_dir)
    write_lines(args.output, translator.translate(read_lines(args.input), args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
