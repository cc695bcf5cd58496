"""Maximum-likelihood fits in z space (SPEC 3, 4, 6.5): batched BFGS (:mod:`.bfgs`), the
NLL objective with exact gradients, Gauss-Newton starts and refinement (:mod:`.mle`),
and the multi-start baselines fanned out as Ray tasks (:mod:`.baseline`)."""
