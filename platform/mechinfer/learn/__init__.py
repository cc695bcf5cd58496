"""The networks and how they learn (SPEC 6, stages 2-4): the proxy and the Deep Set
(:mod:`.networks`), their losses (:mod:`.losses`), checkpoints (:mod:`.checkpoint`), the
Ray Train loop (:mod:`.trainer`) and the Ray Tune search (:mod:`.tuner`)."""
