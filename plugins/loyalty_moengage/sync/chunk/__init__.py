"""The chunk pipeline: plan -> extract -> check -> gate -> pack -> ``sink.write()``, one
keyset chunk of a night at a time (``pipeline.run_chunk``). What a sink must accept
(``sink.Sink``) is defined here, by the pipeline that feeds it."""
