"""An empty stand-in for tensorflow-data-validation, for `examples/tfx_local/run.sh` only.

TFDV 1.21 (TFX 1.21's) has no wheel in our package registries (newest: 1.16.1). TFX's Trainer
and ExampleValidator modules import it at import time for the statistics input, which the
example pipeline does not use. Every attribute is a placeholder class: the names appear in
TFX's type annotations. Never put this directory on the path of a real TFX installation.
"""


def __getattr__(name):
  return type(name, (), {})
