"""BivRec in a TFX pipeline: `trainer.run_fn` is the Trainer's module (`run_fn=
"bivrec_tf.tfx.trainer.run_fn"`), `evaluator` holds what TFX's Evaluator needs. TFX itself is not
imported here: the contract is TFX 1.21's, mirrored from its source (see `trainer`)."""
