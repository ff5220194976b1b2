"""Columns of the ``quality`` manifest: cheap image-quality measurements of each face.

Where they are measured (``stages/quality.py``):

* The *face region* is the expression stage's square face ROI in the stage's frame (from
  detect's points or box; without detect a centred square), area-resized to ``FACE_SIZE``
  pixels so ``sharpness`` compares across image sizes. ``sharpness`` is the variance of the
  3x3 Laplacian of its grayscale (ITU-R 601 luma); the ``luma_*`` percentiles and the clipped
  shares (luma <= ``CLIP_LOW`` or >= ``CLIP_HIGH``) are taken over it too.
* ``tone`` looks at the whole frame: ``grayscale`` when the mean channel spread
  (max - min of R, G, B, 0-255) is below ``gray_chroma``; ``sepia`` when it is not, but all
  unclipped pixels share one hue (``hue_spread`` = 1 - mean resultant length of the chroma
  vectors, CbCr, weighted by their length, below ``sepia_hue_spread``); else ``color``.
  On lfw10, colour photos have hue spread >= 0.020 and sepia-toned copies (also re-saved as
  JPEG) <= 0.0095.
* ``interocular_px`` (eye-centre distance), ``face_area_ratio`` (box area over the source
  image's width x height) and ``n_faces`` come from detect, in source pixels; null without it.
* ``jpeg_quality`` is the IJG quality (1-100) of the source file: from its quantisation tables
  (``jpeg_quality_method`` = ``dqt``) when the stage is handed the source bytes or a value the
  source step measured, else by re-compression (``recompress``): a JPEG decoded at its own
  8x8 grid re-encodes almost losslessly only at its own quality, so the error-versus-quality
  curve has a sharp dip there. That needs the undistorted source frame; on aligned or restored
  frames, or without a dip (non-IJG tables, resized or never-JPEG images), it is null.
* ``fiqa_score``: a learned face-image-quality model's score (``stages/models/fiqa.py``), null
  unless ``fiqa_model`` is set; only comparable within one model.

Skips (``skipped`` rows, reason then measured value, never silent drops; the defaults only drop
samples no downstream use survives):

* ``face_too_small`` when ``interocular_px < min_interocular_px`` (default 8 px: the face is
  then ~20 px wide, below what any face model here resolves);
* ``blurry`` when ``sharpness < min_sharpness`` (default 0, off: the 100 lfw10 photos, centred
  ROI, score 42-565, median 226, and copies blurred with a 1.5 px Gaussian 14-96; the scale
  depends on the frame and the dataset, so pick a cut from the column);
* ``too_many_faces`` when ``n_faces > max_faces`` (default 0, off);
* ``monochrome`` when ``skip_monochrome`` and ``tone`` is grayscale or sepia (default off);
* ``low_fiqa`` when ``fiqa_score < min_fiqa`` (default off).
"""
from __future__ import annotations

import pyarrow as pa

FACE_SIZE = 128
CLIP_LOW, CLIP_HIGH = 2, 253
TONES = ("color", "grayscale", "sepia")
JPEG_METHODS = ("dqt", "recompress")

SCHEMA = pa.schema(
    [
        pa.field("sharpness", pa.float32()),  # Laplacian variance of the face region (FACE_SIZE px)
        pa.field("luma_p5", pa.float32()),  # face-region luma percentiles, 0-255
        pa.field("luma_p50", pa.float32()),
        pa.field("luma_p95", pa.float32()),
        pa.field("clipped_low", pa.float32()),  # share of face-region pixels with luma <= CLIP_LOW
        pa.field("clipped_high", pa.float32()),  # share with luma >= CLIP_HIGH
        pa.field("chroma", pa.float32()),  # whole frame: mean max-min channel spread, 0-255
        pa.field("hue_spread", pa.float32()),  # whole frame: 0 = one hue, 1 = hues cancel out
        pa.field("tone", pa.string()),  # one of TONES
        pa.field("interocular_px", pa.float32()),  # eye-centre distance, source px; null without detect
        pa.field("face_area_ratio", pa.float32()),  # detect box area / source area; null without
        pa.field("n_faces", pa.int32()),  # detect's face count; null without detect
        pa.field("jpeg_quality", pa.int32()),  # estimated IJG quality of the source file, 1-100
        pa.field("jpeg_quality_method", pa.string()),  # one of JPEG_METHODS; null when unknown
        pa.field("fiqa_score", pa.float32()),  # learned face image quality, higher is better
        pa.field("fiqa_model", pa.string()),  # its registry name; null when not run
    ]
)
