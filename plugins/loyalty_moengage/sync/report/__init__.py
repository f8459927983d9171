"""What a run counts and says: the ledger every step writes (``stats``), the night's outcome,
the run report, the text people read and what is forgotten. Below the send steps, which count
into the ledger; above the chunk pipeline, whose results it counts."""
