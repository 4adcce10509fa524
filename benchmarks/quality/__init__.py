"""The paper-style quality report: baselines, ablations and BivRec's practical advantages.

    python -m benchmarks.quality --data synthetic --models all --quick
    python -m benchmarks.quality --data data_cache/scientific --models all --seeds 3 --max-len 20
    python -m benchmarks.quality --data synthetic --mode cold      # 10 % of items held out
    python -m benchmarks.quality --data synthetic --mode noise     # noisy features at test time
    python -m benchmarks.quality --data synthetic --mode cost      # time to best, vs SASRec

Every model is a preset of the one BivRecModel (`bivrec_tf/presets.py`) trained by
`bivrec_tf.train.run` (same data pipeline, early stopping on validation NDCG@20, fusion weight
tuned on validation only, full-ranking test metrics), in a fresh run directory under
`--work-dir`, without export. Any `python -m bivrec_tf.train` flag not listed here (`--max-len
20`, `--epochs 1`, `--lambda-sem 0.5`) overrides every model's config after its preset.

Modes (each writes its own delimited section of `--out`, replaced in place on a rerun):

- `standard`: test Recall/NDCG@{10,20,50} (mean ± std over seeds) and training time per model:
  Popularity, SASRec, ComiRec-SA, MM-seq, BivRec and the ablations; two-view presets report the
  fused row, single-view presets their own view; plus a bar chart of NDCG@20
  (`docs/quality_<data>_ndcg20.png`).
- `cold`: a copy of the dataset with `--cold-share` of the items seen in training removed from
  every training example and from every history (they stay as valid/test targets); recall on the
  test targets that are held-out items, per view (ID view, MM view, fused) and per model.
- `noise` (reuses matching `standard` runs): Gaussian noise of std sigma (in units of the
  per-dimension std: features are standardized) added to every present multimodal feature row
  after training, at test time only; test NDCG@20 per view and fused (w kept from clean
  validation, and re-tuned on noisy validation).
- `cost`: wall time and epochs until the best validation NDCG@20, BivRec against SASRec, and how
  long BivRec needs to pass SASRec's best validation score (shares its runs with `standard`).

Per-run records are kept in `<work-dir>/<data>[-<tag>]-<mode>.json`; a rerun skips (model, seed)
pairs it already has (`--fresh` to start over), so seeds can be added later and a killed run
resumes. Tables are rendered from all records in that store.
"""

# Package layout (one concept per module): `cli` (flags, `main`), `modes` (the four modes'
# runners and sections), `runs` (training a preset once, reusing stored runs), `late_fusion`
# (separately trained views fused), `store` (the locked per-run record store), `cold` (the
# held-out-items dataset copy and its evaluation), `noise` (test-time feature noise),
# `report` (markdown tables and the delimited section of `--out`), `plots` (the charts),
# `provenance` (command, commit and data description above each table), `roster` (model names,
# labels, order).
