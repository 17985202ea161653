"""Speech corpora: the synthetic espeak-ng corpus generator (and readers)."""
