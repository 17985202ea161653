"""Speech corpora: the synthetic espeak-ng corpus generator (and readers), and a phone-like tone signal."""
