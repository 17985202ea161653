"""Scale-out over torch.distributed: the module stack as a pipeline of processes
(:mod:`~online_gim.scale.pipeline`, planned by :mod:`~online_gim.scale.plan`, messages by
:mod:`~online_gim.scale.channel`, state by :mod:`~online_gim.scale.shards`) and many streams learning
one model (:mod:`~online_gim.scale.replicas`, peers watched by :mod:`~online_gim.scale.peers`); the
process group (:mod:`~online_gim.scale.group`) and torchrun (:mod:`~online_gim.scale.launch`);
what a pipeline buys (:mod:`~online_gim.scale.bench`). README: "Scaling out"."""
