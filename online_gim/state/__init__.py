"""Durable learner state: checkpoints in a state directory, resume of a listen run, encoder export.

- :mod:`.codec`: a state tree as named tensors + a JSON skeleton (no pickle);
- :mod:`.atomic`: crash-safe file replacement (temporary file, fsync, rename, fsync directory);
- :mod:`.store`: :class:`~.store.CheckpointStore`, the last K checkpoints with a checksummed manifest;
- :mod:`.checkpointer`: what every listen run's state does (open a state directory, resume, save
  on a schedule), whatever its learner;
- :mod:`.listen_state`: what an audio listen run saves and resumes (stream position, totals), and the
  :class:`~.listen_state.Checkpointer` observer;
- :mod:`.video_state`: the same for the video learner (``listen --source video``);
- :mod:`.export`: the encoder alone (``online-gim export``) and :class:`~.export.Encoder` to embed audio.
"""
