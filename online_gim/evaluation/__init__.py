"""Offline linear evaluation: the method comparison of the GIM and CLAPP papers on corpora we can run.

For each method (a preset in ``configs/``, see :mod:`~online_gim.evaluation.methods`): train its
learner online on the train split of a corpus streamed at maximum speed for a budget of audio
(:mod:`~online_gim.evaluation.training`), freeze it, bring every module's features of the train and
test utterances to the 10 ms label rate (:mod:`~online_gim.evaluation.features`), fit linear probes
on train and report their test accuracy (:mod:`~online_gim.evaluation.linear_probe`): phones per
frame, speakers per frame and per utterance (mean feature), per module. The split:
:mod:`~online_gim.evaluation.split`; the whole run: :func:`~online_gim.evaluation.run.evaluate`;
results and their JSON / Markdown / plot: :mod:`~online_gim.evaluation.results`,
:mod:`~online_gim.evaluation.markdown`, :mod:`~online_gim.evaluation.plot`.
"""
