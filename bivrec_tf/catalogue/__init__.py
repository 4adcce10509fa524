"""Living catalogues: add, retire and update items of a served model without retraining.

`python -m bivrec_tf.catalogue {add,retire,update}` reads an exported version, changes its
catalogue and writes the next version atomically (docs/serving.md, "Living catalogues").

Modules: `served` (the Catalogue a version ranks, stored as ServingModule's variables),
`version` (an exported version read back: metadata, encoders, catalogue; the next version
written), `features` (new items' raw features -> the standardized rows the MM tower reads),
`impute` (ID vectors imputed from MM vectors), `ops` (add / retire / update), `__main__` (CLI).
"""

from bivrec_tf.catalogue.served import Catalogue

__all__ = ["Catalogue"]
