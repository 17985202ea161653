"""The run layer: how a stream of windows meets a learner, whatever the stream and the learner.

- :mod:`.contract`: the protocols: :class:`~.contract.StreamWindow`,
  :class:`~.contract.StreamLearner` (with the :class:`~online_gim.report.StepReport` it returns),
  :class:`~.contract.LearnerView` and :class:`~.contract.StepObserver`.
"""
