"""The run layer: how a stream of windows meets a learner, whatever the stream and the learner.

- :mod:`.contract`: the protocols: :class:`~.contract.StreamWindow`,
  :class:`~.contract.StreamLearner` (with the :class:`~online_gim.report.StepReport` it returns),
  :class:`~.contract.LearnerView` and :class:`~.contract.StepObserver`;
- :mod:`.session`: the one session loop (:class:`~.session.Session`) over any
  :class:`~.session.WindowStream`, with its two schedules: :mod:`.schedule` (``--schedule auto``)
  and :mod:`.replay_schedule` (``--replay``);
- :mod:`.audio` and :mod:`.video`: the two kinds of stream (an audio source through a ring buffer,
  frames through a windower), their sessions and summaries;
- :mod:`.state`: the durable state of a run for any learner (resume, checkpoint on a schedule),
  with the audio and video layouts in :mod:`.audio_state` and :mod:`.video_state`.
"""
