"""Fixes for vLLM 0.32's CPU build, applied in the process that builds the engine."""

from __future__ import annotations


def patch_vllm_cpu_rope() -> None:
    """Make vLLM's CPU rotary kernel correct for 3-D ``[tokens, heads, dim]`` inputs.

    The CPU ``rotary_embedding`` op takes the head count from the last dimension and the token
    stride from the second-to-last, so only 2-D ``[tokens, heads * dim]`` tensors come out right.
    MLA (DeepSeek-V2) passes strided 3-D slices (``q[..., qk_nope_head_dim:]`` and ``k_pe``), so
    vLLM's DeepSeek-V2 drifts from transformers once a prompt has more than one token. Here such
    inputs are rotated as contiguous 2-D copies (the GPU path had the same bug, vLLM PR
    #17091/#18046). Dense models (2-D inputs) are untouched. Idempotent.
    """
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    original = RotaryEmbedding.forward_cpu
    if getattr(original, "_align_flattens_3d", False):
        return

    def forward_cpu(self, positions, query, key=None):
        if query.dim() != 3 and (key is None or key.dim() != 3):
            return original(self, positions, query, key)
        q_flat = query.reshape(query.shape[0], -1).contiguous()
        k_flat = None if key is None else key.reshape(key.shape[0], -1).contiguous()
        q_flat, k_flat = original(self, positions, q_flat, k_flat)
        return q_flat.view(query.shape), None if key is None else k_flat.view(key.shape)

    forward_cpu._align_flattens_3d = True
    RotaryEmbedding.forward_cpu = forward_cpu


def patch_vllm_cpu_moe_reload() -> None:
    """Re-pack MoE expert weights on the CPU backend after a weight reload.

    vLLM 0.32 converts unquantized MoE weights to the kernel's layout in two places: a
    backend-generic ``convert_to_unquantized_kernel_format`` (every load) and the experts' own
    ``process_weights_after_loading`` (first load only: ``UnquantizedFusedMoEMethod._setup_kernel``
    skips it once ``moe_kernel`` exists, i.e. on RL weight updates). The CPU experts prepack into
    their grouped-GEMM layout in the second place, so after ``reload_weights`` the experts hold
    raw checkpoint-layout weights that the kernel reads as packed: the MoE layers compute garbage
    with no error. Measured: reloading the very same weights changes ``w13_weight`` and
    ``w2_weight`` of every MoE layer and the greedy outputs. Here the prepack also runs on updates
    (CPU only), inside the layer-wise reload, so the packed values are copied into the live tensors.
    Idempotent.
    """
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
    from vllm.platforms import current_platform

    original = UnquantizedFusedMoEMethod._setup_kernel
    if getattr(original, "_align_repacks_on_update", False) or not current_platform.is_cpu():
        return

    def _setup_kernel(self, layer, w13, w2):
        is_weight_update = self.moe_kernel is not None
        original(self, layer, w13, w2)
        if is_weight_update:
            self.moe_kernel.fused_experts.process_weights_after_loading(layer)

    _setup_kernel._align_repacks_on_update = True
    UnquantizedFusedMoEMethod._setup_kernel = _setup_kernel
