"""Durable learner state: checkpoints in a state directory and encoder export.

- :mod:`.codec`: a state tree as named tensors + a JSON skeleton (no pickle);
- :mod:`.atomic`: crash-safe file replacement (temporary file, fsync, rename, fsync directory);
- :mod:`.store`: :class:`~.store.CheckpointStore`, the last K checkpoints with a checksummed manifest;
- :mod:`.export`: the encoder alone (``online-gim export``) and :class:`~.export.Encoder` to embed audio.

What a run saves and resumes (open a state directory, restore, checkpoint on a schedule) is the run
layer's: :mod:`online_gim.run.state`, with the audio and video layouts in
:mod:`online_gim.run.audio_state` and :mod:`online_gim.run.video_state`.
"""
