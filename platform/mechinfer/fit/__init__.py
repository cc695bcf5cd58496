"""Maximum-likelihood fits in z space (SPEC 3, 4): batched BFGS (:mod:`.bfgs`), and the
NLL objective with exact gradients, Gauss-Newton starts and refinement (:mod:`.mle`)."""
