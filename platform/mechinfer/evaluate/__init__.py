"""Table 1 (SPEC 6.5, 6.6): the BFGS baselines over the test set, fanned out as Ray tasks
(:mod:`.baseline`), and every method's R2, R2_true and time per sample, written as
Markdown, CSV and figures (:mod:`.report`)."""
