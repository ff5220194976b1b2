"""faceweave pipeline: sources, safe decoding, stage runner and writers."""
