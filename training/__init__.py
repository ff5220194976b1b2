"""Trainers that consume the pipeline's output (WebDataset shards + per-stage Parquet manifests).

Depends on ``schemas`` (and ``stages.models`` for frozen networks) only, never on ``pipeline``.

* ``pairs``: identity index over the shards: same-person references for every target;
* ``data``: LightningDataModule streaming paired, decoded batches (resumable);
* ``heatmaps``: dense-annotation targets (Gaussian landmark heatmaps, mask, depth);
* ``sd``: frozen Stable Diffusion components (diffusers folder, hub id, or tiny in code);
* ``dense_face``: the Dense-Face LightningModule; ``infer_dense_face``: its two-mode inference;
* ``train``: ``train(model_name, shards, base, config, overrides)``; configs in ``configs/``.
"""
