"""Simulated datasets (SPEC 5): the Parquet format and its manifest (:mod:`.format`),
experiments as rows and the SPEC test set (:mod:`.samples`), and the Ray Data job that
simulates millions of them across CPU workers (:mod:`.generate`)."""
