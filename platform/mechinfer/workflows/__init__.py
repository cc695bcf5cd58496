"""Stages run together: the whole pipeline of SPEC 6 in one run directory
(:mod:`.pipeline`) and the recipe of the shipped checkpoints (:mod:`.pretrain`)."""
