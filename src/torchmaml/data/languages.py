"""Which language is this word? Few-shot classes from the word lists of the ``wordfreq`` package.

``wordfreq`` (code Apache-2.0; word lists CC BY-SA 4.0, built from Wikipedia, subtitles, news, books, web text
and more by Robyn Speer et al.) ships frequency-ranked word lists of 42 languages inside its wheel, so the
benchmark installs with ``pip install "torchmaml[text]"`` and runs offline. A class is a language; its
examples are its ``words`` most frequent words that are purely alphabetic (``str.isalpha``) and appear in the
top 5,000 of no other language (``de``, ``a`` or ``no`` name no single language); cut to ``max_length`` bytes, a
few long words coincide (at 16 bytes one pair of 12,276 words: Bulgarian and Russian ``александ...``). Bengali,
Hindi and Tamil have short lists (67 to 315 such words); every other language has over 1,300.

``LANGUAGE_GROUPS`` selects the classes: ``all`` (42 languages, 13 scripts: most tasks can be told apart by
script alone) or ``latin`` (the 27 written in the Latin alphabet: tasks of similar classes). The encoded words
are cached in ``cache_dir`` (one ``.npz`` named by the options and the wordfreq version).

    data = load_languages("latin", words=300, length=16, cache_dir="~/.cache/torchmaml")
    data.class_names[:3], data.ids[0].shape   # ('ca', 'cs', 'da'), torch.Size([300, 16])
"""

from __future__ import annotations

import collections
import os
from importlib import metadata
from pathlib import Path

from torchmaml.data.images import load_cache, save_cache
from torchmaml.data.text import TextClasses, classes_from_texts
from torchmaml.extras import require

CANDIDATES = 5000  # the top words of each language among which examples are chosen
LATIN = (
    "ca", "cs", "da", "de", "en", "es", "fi", "fil", "fr", "hu", "id", "is", "it", "lt", "lv", "ms", "nb", "nl", "pl",
    "pt", "ro", "sh", "sk", "sl", "sv", "tr", "vi",
)  # fmt: skip
OTHER = ("ar", "bg", "bn", "el", "fa", "he", "hi", "ja", "ko", "mk", "ru", "ta", "uk", "ur", "zh")
LANGUAGE_GROUPS = {"all": tuple(sorted(LATIN + OTHER)), "latin": LATIN}


def load_languages(group: str, *, words: int, length: int, cache_dir: str | Path | None = None) -> TextClasses:
    """The languages of ``group`` as classes of ``words`` words each (fewer where a language has fewer),
    encoded to ``length`` byte tokens (``torchmaml.data.text.encode``)."""
    languages = LANGUAGE_GROUPS[group]
    version = metadata.version("wordfreq") if _installed() else "missing"
    meta = {"dataset": "wordfreq-languages", "wordfreq": version, "words": words, "length": length}
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache()
    cache = folder / f"languages-{version}-{words}-{length}.npz"
    arrays = load_cache(cache, meta)
    if arrays is None:
        arrays = classes_from_texts(word_lists(words), length).arrays()
        save_cache(cache, arrays, meta)
    every = TextClasses.from_arrays(arrays)
    keep = [every.class_names.index(language) for language in languages]
    return TextClasses(tuple(every.class_names[c] for c in keep), tuple(every.ids[c] for c in keep))


def word_lists(words: int) -> dict[str, list[str]]:
    """``{language: its words}`` for every language of ``LANGUAGE_GROUPS["all"]`` (see the module docstring)."""
    wordfreq = require("wordfreq", "text")
    tops = {
        language: [w for w in wordfreq.top_n_list(language, CANDIDATES, wordlist="small") if w.isalpha()]
        for language in LANGUAGE_GROUPS["all"]
    }
    owners = collections.Counter(word for top in tops.values() for word in set(top))
    return {language: [w for w in top if owners[w] == 1][:words] for language, top in tops.items()}


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/torchmaml`` (``~/.cache/torchmaml``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchmaml"


def _installed() -> bool:
    try:
        metadata.version("wordfreq")
    except metadata.PackageNotFoundError:
        return False
    return True
