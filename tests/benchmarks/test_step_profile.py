"""The step profiler's bookkeeping: op names to model parts, HLO instructions to op names."""

from benchmarks.step_profile import hlo_op_names, model_part

HLO = """HloModule m

%fused_computation.1 (p.0: f32[4,8]) -> f32[4,8] {
  %p.0 = f32[4,8]{1,0} parameter(0)
  ROOT %multiply.3 = f32[4,8] multiply(%p.0, %p.0), metadata={op_name="gradient_tape/mm_view/mm_tower/norm_text/mul"}
}

%wrapped_reduce-window_computation (param_0: f32[4,8], param_1: f32[]) -> f32[4,2] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[] parameter(1)
  ROOT %reduce-window.1 = f32[4,2]{1,0} reduce-window(%param_0, %param_1), window={size=1x4 stride=1x4}, to_apply=%add
}

ENTRY %main (a: f32[4,8]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %MatMul.96 = f32[4,8] dot(%a, %a), metadata={op_name="mm_view/mm_tower/fuse_hidden/MatMul"}
  %multiply_fusion = f32[4,8]{1,0} fusion(%MatMul.96), kind=kLoop, calls=%fused_computation.1
  ROOT %wrapped_reduce-window = f32[4,2] fusion(%multiply_fusion, %a), calls=%wrapped_reduce-window_computation
}
"""


def test_hlo_instructions_map_to_their_op_through_metadata_calls_and_inputs():
  names = hlo_op_names(HLO)
  assert names["MatMul.96"] == "mm_view/mm_tower/fuse_hidden/MatMul"  # its own metadata
  # A fusion without metadata: the op inside the computation it calls.
  assert names["multiply_fusion"] == "gradient_tape/mm_view/mm_tower/norm_text/mul"
  # A split-out reduction with no op anywhere inside: the op its input came from.
  assert names["wrapped_reduce-window"] == "gradient_tape/mm_view/mm_tower/norm_text/mul"
  assert "a" not in names  # a parameter belongs to no op


def test_op_names_fall_into_model_parts_forward_and_backward():
  assert model_part("mm_view/mm_tower/fuse_hidden/MatMul") == ("MM tower, fusion MLP", "forward")
  assert model_part("gradient_tape/mm_view/mm_tower/norm_text/mul") == ("MM tower", "backward")
  assert model_part("id_view/interest_decomposition/einsum") == ("ID modules 1-2", "forward")
  assert model_part("gradient_tape/mm_view/interest_embedding/x") == ("MM modules 1-2", "backward")
  assert model_part("Adam/Unique") == ("optimizer", "forward")
  assert model_part("id_view/id_tower/embedding_lookup") == ("ID table", "forward")
  assert model_part("softmax_cross_entropy_with_logits") == ("scoring, losses, metrics", "forward")
  # the max over interests' hand-written backward (bivrec_tf.model.winner_scores)
  assert model_part("winner_scores_grad/einsum") == ("scoring, losses, metrics", "backward")
  assert model_part("winner_scores_grad_1/einsum") == ("scoring, losses, metrics", "backward")
  assert model_part("id_view/upgrade/einsum") == ("scoring, losses, metrics", "forward")
