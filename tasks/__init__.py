"""The steps of the pipeline: ingestion, windows, training loops, the teacher cache, evaluation
and the registry. Flows call these; these call models/."""
