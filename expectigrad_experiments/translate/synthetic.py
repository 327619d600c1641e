"""A generated parallel corpus between two invented languages ("Avek" -> "Tirun").

Nothing is downloaded: the lexicons and the sentences are drawn from a
``numpy`` generator seeded with ``seed``, so the corpus is a pure function of
``(seed, sizes)``. The pair is small but has the structure that makes
translation more than word substitution:

* **Lexical mapping.** Every noun, adjective, verb, preposition and function
  word of the source language has one invented counterpart in the target
  language (two independent lexicons, different sound inventories). Proper
  names are shared and copied verbatim (and keep their capital letter).
* **Word order.** The source is SVO with adjectives before the noun and
  prepositions (``Det Adj N V Det N P Det N``); the target is SOV with
  adjectives after the noun, an object case particle and postpositions
  (``N Adj Det  N Det OBJ  N Det P  V``). Both clauses of a coordination are
  reordered independently.
* **Agreement.** Each target noun has a lexical gender (m/f) that the source
  does not show. Target adjectives agree with their noun in gender and
  number, and the target verb agrees with the *subject* in gender and number
  (``-ak`` m.sg, ``-esh`` f.sg, ``-ur`` plural), so the verb, which comes last
  in the target, depends on a word that may be far away. The source verb only
  shows number (``-i`` sg, ``-o`` pl). Plural nouns: source ``-en``; target
  ``-im`` (m) / ``-ot`` (f).
* **Morphology from particles.** Source negation and past tense are separate
  particles (``ne``, ``ta``) before the verb; in the target they are a prefix
  (``na-``) and a suffix after the agreement ending (``-vi``).

A sentence starts with a capital letter and ends with ``.``, so cased and
uncased BLEU differ.

``generate_corpus(seed, n_train, n_eval)`` returns ``Corpus(train, eval)``,
lists of ``(source, target)`` strings; ``sample_clause``/``render_*`` expose the
grammar to the tests.
"""

import dataclasses

import numpy as np

__all__ = [
    "Lexicon",
    "Corpus",
    "make_lexicon",
    "generate_corpus",
    "sample_sentence",
    "render_source",
    "render_target",
    "SRC_PLURAL",
    "TGT_PLURAL",
    "TGT_VERB_AGREEMENT",
    "TGT_ADJ_AGREEMENT",
]

# --- morphology -------------------------------------------------------------
SRC_PLURAL = "en"
SRC_VERB_NUMBER = {"sg": "i", "pl": "o"}
SRC_NEG, SRC_PAST, SRC_AND = "ne", "ta", "u"
SRC_DET = {"def": "ka", "indef": "mo"}

TGT_PLURAL = {"m": "im", "f": "ot"}
TGT_VERB_AGREEMENT = {("m", "sg"): "ak", ("f", "sg"): "esh", ("m", "pl"): "ur", ("f", "pl"): "ur"}
TGT_ADJ_AGREEMENT = {("m", "sg"): "", ("f", "sg"): "a", ("m", "pl"): "i", ("f", "pl"): "e"}
TGT_NEG_PREFIX, TGT_PAST_SUFFIX, TGT_AND = "na", "vi", "zo"
TGT_DET = {"def": "lu", "indef": "hen"}
TGT_OBJ = "wa"

_SRC_SOUNDS = ("ptkbdgmnlrsvf", "aeiou")
_TGT_SOUNDS = ("tkmnlrshzjwy", "aeiouy")

# Sizes of the lexicons.
N_NOUNS, N_ADJ, N_TVERBS, N_IVERBS, N_PREPS, N_NAMES = 160, 50, 60, 25, 8, 30

_FUNCTION_WORDS = {
    SRC_NEG, SRC_PAST, SRC_AND, TGT_NEG_PREFIX, TGT_AND, TGT_OBJ,
    *SRC_DET.values(), *TGT_DET.values(),
}


@dataclasses.dataclass(frozen=True)
class Lexicon:
    """Parallel word lists; entry i of a source list translates to entry i of the target list."""

    src_nouns: tuple
    tgt_nouns: tuple
    genders: tuple  # target gender of each noun, "m" or "f"
    src_adjs: tuple
    tgt_adjs: tuple
    src_tverbs: tuple  # transitive
    tgt_tverbs: tuple
    src_iverbs: tuple  # intransitive
    tgt_iverbs: tuple
    src_preps: tuple
    tgt_posts: tuple
    names: tuple  # shared, capitalised
    name_genders: tuple


@dataclasses.dataclass
class Corpus:
    train: list
    eval: list
    lexicon: Lexicon


def _words(rng, sounds, count, taken, syllables=(2, 3)):
    cons, vows = sounds
    out = []
    while len(out) < count:
        n = int(rng.integers(syllables[0], syllables[1] + 1))
        w = "".join(cons[rng.integers(len(cons))] + vows[rng.integers(len(vows))] for _ in range(n))
        if rng.random() < 0.4:
            w += cons[rng.integers(len(cons))]
        if w in taken:
            continue
        taken.add(w)
        out.append(w)
    return tuple(out)


def make_lexicon(seed):
    """The two lexicons, a pure function of ``seed``."""
    rng = np.random.default_rng([seed, 101])
    src_taken, tgt_taken = set(_FUNCTION_WORDS), set(_FUNCTION_WORDS)
    src = lambda n: _words(rng, _SRC_SOUNDS, n, src_taken)  # noqa: E731
    tgt = lambda n: _words(rng, _TGT_SOUNDS, n, tgt_taken)  # noqa: E731
    names = tuple(
        w.capitalize() for w in _words(rng, ("bdfgklmnprstvz", "aeiouy"), N_NAMES, src_taken | tgt_taken)
    )
    return Lexicon(
        src_nouns=src(N_NOUNS), tgt_nouns=tgt(N_NOUNS),
        genders=tuple("m" if g else "f" for g in rng.integers(0, 2, N_NOUNS)),
        src_adjs=src(N_ADJ), tgt_adjs=tgt(N_ADJ),
        src_tverbs=src(N_TVERBS), tgt_tverbs=tgt(N_TVERBS),
        src_iverbs=src(N_IVERBS), tgt_iverbs=tgt(N_IVERBS),
        src_preps=_words(rng, _SRC_SOUNDS, N_PREPS, src_taken, (1, 1)),
        tgt_posts=_words(rng, _TGT_SOUNDS, N_PREPS, tgt_taken, (1, 2)),
        names=names,
        name_genders=tuple("m" if g else "f" for g in rng.integers(0, 2, N_NAMES)),
    )


# --- sentence structures ----------------------------------------------------
# An NP is a dict: {"name": i} or {"noun": i, "det": "def"|"indef", "num": "sg"|"pl", "adjs": [j, ...]}
# A clause: {"subj": NP, "verb": i, "transitive": bool, "obj": NP|None, "pp": (p, NP)|None,
#            "neg": bool, "past": bool}


_ZIPF_CDF = {}


def _zipf(rng, n, a=1.1):
    """A word index with a Zipf-like frequency profile (frequent and rare words)."""
    cdf = _ZIPF_CDF.get((n, a))
    if cdf is None:
        w = 1.0 / np.arange(1, n + 1) ** a
        cdf = _ZIPF_CDF[(n, a)] = np.cumsum(w / w.sum())
    return min(int(np.searchsorted(cdf, rng.random(), side="right")), n - 1)


def _sample_np(rng, lex, allow_name=True):
    if allow_name and rng.random() < 0.15:
        return {"name": int(rng.integers(len(lex.names)))}
    u = rng.random()
    n_adj = 0 if u < 0.5 else (1 if u < 0.85 else 2)
    adjs = []
    while len(adjs) < n_adj:
        a = int(rng.integers(len(lex.src_adjs)))
        if a not in adjs:
            adjs.append(a)
    return {
        "noun": _zipf(rng, len(lex.src_nouns)),
        "det": "def" if rng.random() < 0.6 else "indef",
        "num": "pl" if rng.random() < 0.35 else "sg",
        "adjs": adjs,
    }


def sample_clause(rng, lex):
    transitive = rng.random() < 0.7
    n_verbs = len(lex.src_tverbs if transitive else lex.src_iverbs)
    clause = {
        "subj": _sample_np(rng, lex),
        "transitive": transitive,
        "verb": _zipf(rng, n_verbs, 0.8),
        "obj": _sample_np(rng, lex) if transitive else None,
        "pp": None,
        "neg": bool(rng.random() < 0.2),
        "past": bool(rng.random() < 0.3),
    }
    if rng.random() < 0.3:
        clause["pp"] = (int(rng.integers(len(lex.src_preps))), _sample_np(rng, lex, allow_name=False))
    return clause


def sample_sentence(rng, lex):
    """One or two clauses (coordination with probability 0.2)."""
    clauses = [sample_clause(rng, lex)]
    if rng.random() < 0.2:
        clauses.append(sample_clause(rng, lex))
    return clauses


def np_gender_number(np_, lex):
    if "name" in np_:
        return lex.name_genders[np_["name"]], "sg"
    return lex.genders[np_["noun"]], np_["num"]


def _src_np(np_, lex):
    if "name" in np_:
        return [lex.names[np_["name"]]]
    noun = lex.src_nouns[np_["noun"]] + (SRC_PLURAL if np_["num"] == "pl" else "")
    return [SRC_DET[np_["det"]]] + [lex.src_adjs[a] for a in np_["adjs"]] + [noun]


def _tgt_np(np_, lex):
    if "name" in np_:
        return [lex.names[np_["name"]]]
    gender, num = np_gender_number(np_, lex)
    noun = lex.tgt_nouns[np_["noun"]] + (TGT_PLURAL[gender] if num == "pl" else "")
    adjs = [lex.tgt_adjs[a] + TGT_ADJ_AGREEMENT[(gender, num)] for a in np_["adjs"]]
    return [noun] + adjs + [TGT_DET[np_["det"]]]


def _src_clause(c, lex):
    _, num = np_gender_number(c["subj"], lex)
    verbs = lex.src_tverbs if c["transitive"] else lex.src_iverbs
    words = _src_np(c["subj"], lex)
    words += [SRC_NEG] if c["neg"] else []
    words += [SRC_PAST] if c["past"] else []
    words += [verbs[c["verb"]] + SRC_VERB_NUMBER[num]]
    if c["obj"] is not None:
        words += _src_np(c["obj"], lex)
    if c["pp"] is not None:
        words += [lex.src_preps[c["pp"][0]]] + _src_np(c["pp"][1], lex)
    return words


def _tgt_clause(c, lex):
    gender, num = np_gender_number(c["subj"], lex)
    verbs = lex.tgt_tverbs if c["transitive"] else lex.tgt_iverbs
    words = _tgt_np(c["subj"], lex)
    if c["obj"] is not None:
        words += _tgt_np(c["obj"], lex) + [TGT_OBJ]
    if c["pp"] is not None:
        words += _tgt_np(c["pp"][1], lex) + [lex.tgt_posts[c["pp"][0]]]
    verb = (TGT_NEG_PREFIX if c["neg"] else "") + verbs[c["verb"]] + TGT_VERB_AGREEMENT[(gender, num)]
    verb += TGT_PAST_SUFFIX if c["past"] else ""
    return words + [verb]


def _finish(words):
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "."


def render_source(clauses, lex):
    words = []
    for i, c in enumerate(clauses):
        words += ([SRC_AND] if i else []) + _src_clause(c, lex)
    return _finish(words)


def render_target(clauses, lex):
    words = []
    for i, c in enumerate(clauses):
        words += ([TGT_AND] if i else []) + _tgt_clause(c, lex)
    return _finish(words)


def generate_corpus(seed=1, n_train=50000, n_eval=500):
    """``Corpus(train, eval, lexicon)``; eval sources never occur in train."""
    lex = make_lexicon(seed)
    rng = np.random.default_rng([seed, 202])

    def pair():
        clauses = sample_sentence(rng, lex)
        return render_source(clauses, lex), render_target(clauses, lex)

    train = [pair() for _ in range(n_train)]
    seen = {s for s, _ in train}
    evals = []
    while len(evals) < n_eval:
        s, t = pair()
        if s not in seen:
            seen.add(s)
            evals.append((s, t))
    return Corpus(train=train, eval=evals, lexicon=lex)
