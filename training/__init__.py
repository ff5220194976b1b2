"""Trainers that consume the pipeline's output (WebDataset shards + per-stage Parquet manifests).

Depends on ``schemas`` (and ``stages.models`` for frozen networks) only, never on ``pipeline``.

* ``pairs``: identity index over the shards: same-person references for every target;
* ``data``: LightningDataModule streaming paired, decoded batches (resumable);
* ``heatmaps``: dense-annotation targets (Gaussian landmark heatmaps, mask, depth);
* ``sd``: frozen Stable Diffusion components (diffusers folder, hub id, or tiny in code);
* ``dense_face``: the Dense-Face LightningModule; ``infer_dense_face``: its two-mode inference;
* ``portraitbooth``: the PortraitBooth LightningModule; ``infer_portraitbooth``;
* ``msid``: Face2Diffusion's multi-scale identity encoder and its pre-training;
* ``face2diffusion``: the F2D mapping networks with CGDR; ``infer_face2diffusion``;
* ``sefi_ide`` (+ ``sefi_ide_blocks``): SeFi-IDE per-stage (K, V) tokens; ``infer_sefi_ide``;
* ``text_tokens``: learned word embeddings injected into a frozen CLIP text encoder;
* ``catalog``: the models and their shipped configs; ``progress``: the step progress output;
* ``train``: ``train(model_name, shards, base, config, overrides, runs_dir=...)``; configs in ``configs/``.
"""
