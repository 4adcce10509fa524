"""Per-view model selection: each view of a jointly trained model taken from its own best epoch.

The two views of a joint model do not peak together: on Online Retail II the ID view's validation
NDCG@20 peaks an epoch or more before the MM view's, and one best epoch for the whole model (the
fused score's) leaves one of them past or short of its best. Views trained separately (late
fusion) are each stopped at their own best. `view_selection="per_view"` gives the joint model the
same: the validation callback keeps a checkpoint per view (`ValidationCallback(view_paths=...)`),
and after training `assemble_views` builds the composite, each view's encoder (item tower and
modules 1-2) from its own checkpoint. The caller keeps the composite only when its fused
validation score beats the joint best epoch's, so the choice is made on validation alone.
"""

from pathlib import Path
from typing import Dict


def assemble_views(model, paths: Dict[str, Path]) -> None:
  """Load each view's variables from its own checkpoint, in place.

  Args: model: a `BivRecModel`; paths: {view: weights path saved by `model.save_weights`} for
    some or all of `model.views`. Variables outside the views (none are read at inference)
    keep the values of the last checkpoint loaded.
  """
  values = {}
  for view, path in paths.items():
    model.load_weights(str(path)).expect_partial()
    values[view] = [variable.numpy() for variable in model.views[view].variables]
  for view, saved in values.items():
    for variable, value in zip(model.views[view].variables, saved):
      variable.assign(value)
