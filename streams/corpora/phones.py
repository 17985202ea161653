"""The synthetic corpus's phone classes: 40 ARPAbet classes (0 = silence) and espeak-ng's mapping.

Classes: ``0 = sil``, then the 39 phonemes of the CMU dictionary's ARPAbet set without stress,
in alphabetical order (``AA`` = 1 ... ``ZH`` = 39). 40 classes fit the 41-class (0..40) probes of
GIM/CPC, where 0 is silence as well; the numbering is this corpus's own (CPC's converted label ids
are not published with names, so no attempt is made to match them).

espeak-ng's English phoneme mnemonics (the ASCII "Kirshenbaum"-like names of its phoneme tables
``en``, ``en-us``, ``en-sc``, ``en-rp``, ``en-n``, ``en-wm``, ``en-wi``, ``en-us-nyc`` and the
consonants they take from ``base1``; read from ``espeak-ng-data/phontab`` of espeak-ng 1.51) map to
the nearest ARPAbet phoneme, following General American where accents differ (RP's ``0`` in
"lot" -> ``AA``, ``3:`` -> ``ER``). Choices worth knowing:

* r-coloured and centring diphthongs that espeak makes one phoneme (``A@`` "car", ``O@`` "or",
  ``e@`` "air", ``i@`` "ear", ``U@`` "cure", ``aI@`` "fire", ``aU@`` "hour") map to their vowel;
  the ``r`` is part of that phoneme in espeak and is not split off.
* flaps and glottal stops (``t#``, ``t2``, ``d#``, ``?``) -> ``T``/``D``; syllabic consonants
  (``@L``, ``n-``, ``m-``, ``l-``, ``r-``) -> their consonant.
* pauses (``_``, ``_:``, ``_!``, ``_|``, ...) and audio outside any phoneme -> ``sil``.

Unknown mnemonics (never seen for the corpus's English voices, but possible with other espeak-ng
versions) fall back, in order: strip modifier characters (``#``, digits after the first
character, ``/ ; . ^ [ - ~``) and look up again; else a name starting with a vowel symbol
(``a e i o u @ 3 0 A E I O U V``) -> ``AH``; else its first character as a consonant if known;
else ``AH``. Every fallback is counted in ``PhoneMapper.unknown`` so that a corpus can report it.
"""

from __future__ import annotations

from collections import Counter

PHONES: tuple[str, ...] = (
    "sil",
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH",
    "UW", "V", "W", "Y", "Z", "ZH",
)
"""Class names by class index; ``PHONES[0] == "sil"``."""

NUM_PHONES = len(PHONES)
"""Number of phone classes (40)."""

SILENCE = 0
"""Class of silence and pauses."""

PHONE_INDEX: dict[str, int] = {name: index for index, name in enumerate(PHONES)}

PAUSES: frozenset[str] = frozenset({"", "_", "_:", "_::", "_!", "_|", "_^_", "_;_", "_X1", "||", "-", ":", "?_"})
"""espeak-ng mnemonics of pauses and boundaries; all map to ``sil``."""

_ESPEAK_TO_ARPABET: dict[str, str] = {
    # ---- consonants (base1 and the English tables)
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G",
    "f": "F", "v": "V", "T": "TH", "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH",
    "h": "HH", "x": "HH", "C": "HH", "X": "HH",
    "m": "M", "n": "N", "N": "NG",
    "l": "L", "l/": "L", "l/2": "L", "l/3": "L", "L": "L", "l^": "L", "l.": "L", "L/": "L", "l#": "L",
    "r": "R", "r/": "R", "R": "R", "R2": "R", "R3": "R", "*": "R", "**": "R", "r.": "R", 'r"': "R",
    "w": "W", "w#": "W", "w2": "W", "j": "Y", ";": "Y",
    "tS": "CH", "dZ": "JH", "tS;": "CH", "dZ;": "JH", "ts": "T",
    "t#": "T", "t2": "T", "t[": "T", "d#": "D", "d[": "D", "?": "T",
    "z#": "Z", "z/2": "Z", "s;": "S", "z;": "Z", "S;": "SH", "Z;": "ZH", "s.": "S", "z.": "Z",
    "n^": "N", "n.": "N", "N-": "NG", "v#": "V", "B": "V", "Q": "G", "q": "K", "c": "K", "J": "JH",
    # syllabic consonants
    "@L": "L", "l-": "L", "n-": "N", "m-": "M", "r-": "R",
    # ---- vowels
    "@": "AH", "@2": "AH", "@5": "AH", "@#": "AH", "@-": "AH", "#@": "AH",
    "3": "ER", "3:": "ER", "VR": "ER", "IR": "IH",
    "a": "AE", "aa": "AE", "a/": "AE", "a#": "AH", "a2": "AH", "a#2": "AH",
    "A:": "AA", "A@": "AA", "A#": "AA", "A~": "AA", "0": "AA", "0#": "AA", "02": "AA",
    "O": "AO", "O:": "AO", "O2": "AO", "O@": "AO", "o@": "AO", "O~": "AO", "o:": "OW", "o": "OW",
    "V": "AH",
    "E": "EH", "E#": "EH", "E2": "EH", "e": "EH", "e#": "EH", "e@": "EH", "e:": "EY",
    "I": "IH", "I#": "IH", "I2": "IH", "I2#": "IH",
    "i": "IY", "i:": "IY", "i@": "IY", "i@3": "IY",
    "U": "UH", "U@": "UH", "u:": "UW", "u": "UW", "y": "UW", "Y": "UW",
    "aU": "AW", "aU@": "AW", "oU": "OW", "oU#": "OW", "eU": "OW", "iU": "UW",
    "aI": "AY", "aI@": "AY", "aI3": "AY", "aI2": "AY", "eI": "EY", "EI": "EY",
    "OI": "OY", "oI": "OY", "uI": "UW",
}

ESPEAK_TO_PHONE: dict[str, int] = {
    **{name: PHONE_INDEX[arpabet] for name, arpabet in _ESPEAK_TO_ARPABET.items()},
    **{name: SILENCE for name in PAUSES},
}
"""espeak-ng mnemonic -> phone class, for every phoneme its English voices emit."""

_VOWEL_START = set("aeiou@30AEIOUV")
_MODIFIERS = set("#/;.^[-~'")


def _fallback(name: str) -> int:
    """The documented fallback class of a mnemonic that is not in ``ESPEAK_TO_PHONE``."""
    if name.startswith("_") or name.startswith("|"):
        return SILENCE
    stripped = name[:1] + "".join(c for c in name[1:] if c not in _MODIFIERS and not c.isdigit())
    stripped = "".join(c for c in stripped if c not in _MODIFIERS) or name
    if stripped in ESPEAK_TO_PHONE:
        return ESPEAK_TO_PHONE[stripped]
    if name[:1] in _VOWEL_START:
        return PHONE_INDEX["AH"]
    if name[:1] in ESPEAK_TO_PHONE:
        return ESPEAK_TO_PHONE[name[:1]]
    return PHONE_INDEX["AH"]


class PhoneMapper:
    """Maps espeak-ng mnemonics to phone classes and counts the ones that needed the fallback."""

    def __init__(self) -> None:
        self.unknown: Counter[str] = Counter()
        """Mnemonics that were not in ``ESPEAK_TO_PHONE``, with how often they occurred."""

    def __call__(self, name: str) -> int:
        phone = ESPEAK_TO_PHONE.get(name)
        if phone is None:
            self.unknown[name] += 1
            phone = _fallback(name)
        return phone


def phone_name(index: int) -> str:
    """Name of a class index (``"sil"``, ``"AA"``, ...)."""
    return PHONES[index]
