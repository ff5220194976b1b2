"""Column schemas, label maps and word lists shared by the pipeline, its readers and trainers.

Imports nothing of ours: readers (auditors, trainers) depend on this package alone.
"""
