"""Table 1 (SPEC 4, 6.6): every method's R2, R2_true and time per sample on the SPEC test
set, written as Markdown, CSV and figures (:mod:`.report`)."""
