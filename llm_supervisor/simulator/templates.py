"""Long fixed texts copied from real vLLM 0.26.0 output (tests/fixtures/vllm-0.26.0-h100), with
`{fields}` where a run's own values go."""

# EngineCore's "Initializing a V1 LLM engine …" line, ready-then-sigterm.log (fields: str.format)
ENGINE_CONFIG = (
    "Initializing a V1 LLM engine (v{version}) with config: model='{model}', speculative_config=None, "
    "tokenizer='{model}', skip_tokenizer_init=False, tokenizer_mode=auto, revision={revision}, "
    'tokenizer_revision=None, trust_remote_code={trust_remote_code}, dtype={dtype}, '
    'max_seq_len={max_seq_len}, download_dir=None, load_format={load_format}, tensor_parallel_size={tp}, '
    'pipeline_parallel_size={pp}, data_parallel_size={dp}, decode_context_parallel_size=1, '
    'dcp_comm_backend=ag_rs, disable_custom_all_reduce={dcar}, quantization={quantization}, '
    'quantization_config=None, enforce_eager={enforce_eager}, enable_return_routed_experts=False, '
    'kv_cache_dtype={kv_cache_dtype}, device_config=cuda, '
    "structured_outputs_config=StructuredOutputsConfig(backend='auto', disable_any_whitespace=False, "
    "disable_additional_properties=False, reasoning_parser='', reasoning_parser_plugin='', "
    'enable_in_reasoning=False), '
    'observability_config=ObservabilityConfig(show_hidden_metrics_for_version=None, '
    'otlp_traces_endpoint=None, collect_detailed_traces=None, kv_cache_metrics=False, '
    'kv_cache_metrics_sample=0.01, cudagraph_metrics=False, enable_layerwise_nvtx_tracing=False, '
    'enable_mfu_metrics=False, enable_mm_processor_stats=False, enable_logging_iteration_details=False, '
    "jit_monitor_mode='warn', jit_monitor_verbose=False), seed=0, served_model_name={served}, "
    'enable_prefix_caching={prefix_caching}, enable_chunked_prefill=True, pooler_config=None, '
    "compilation_config={{'mode': {mode}, 'debug_dump_path': None, 'cache_dir': '', "
    "'compile_cache_save_format': 'binary', 'backend': 'inductor', 'custom_ops': ['none'], "
    "'ir_enable_torch_wrap': True, 'splitting_ops': ['vllm::unified_attention_with_output', "
    "'vllm::unified_mla_attention_with_output', 'vllm::mamba_mixer2', 'vllm::mamba_mixer', "
    "'vllm::short_conv', 'vllm::linear_attention', 'vllm::plamo2_mamba_mixer', "
    "'vllm::qwen_gdn_attention_core', 'vllm::gdn_attention_core_xpu', "
    "'vllm::olmo_hybrid_gdn_full_forward', 'vllm::kda_attention', 'vllm::sparse_attn_indexer', "
    "'vllm::rocm_aiter_sparse_attn_indexer', 'vllm::deepseek_v4_attention', 'vllm::hpc_rope_norm_forward', "
    "'vllm::unified_kv_cache_update', 'vllm::unified_mla_kv_cache_update'], 'compile_mm_encoder': False, "
    "'cudagraph_mm_encoder': False, 'encoder_cudagraph_token_budgets': [], "
    "'encoder_cudagraph_max_vision_items_per_batch': 0, 'encoder_cudagraph_max_frames_per_batch': None, "
    "'compile_sizes': [], 'compile_ranges_endpoints': [{batched}], "
    "'inductor_compile_config': {{'enable_auto_functionalized_v2': False, 'size_asserts': False, "
    "'alignment_asserts': False, 'scalar_asserts': False, 'combo_kernels': True, "
    "'benchmark_combo_kernel': True}}, 'inductor_passes': {{}}, 'cudagraph_mode': {graph_mode}, "
    "'cudagraph_num_of_warmups': 1, 'cudagraph_capture_sizes': {capture_sizes}, "
    "'cudagraph_copy_inputs': False, 'cudagraph_specialize_lora': True, "
    "'use_inductor_graph_partition': False, 'pass_config': {{'fuse_norm_quant': False, "
    "'fuse_act_quant': False, 'fuse_attn_quant': False, 'enable_sp': False, 'fuse_gemm_comms': False, "
    "'fuse_allreduce_rms': False, 'enable_qk_norm_rope_fusion': False, 'fuse_rope_kvcache_cat_mla': False, "
    "'fuse_act_padding': False, 'fuse_qk_norm_rope_kvcache': False}}, "
    "'max_cudagraph_capture_size': {max_capture}, "
    "'dynamic_shapes_config': {{'type': <DynamicShapesType.BACKED: 'backed'>, 'evaluate_guards': False, "
    "'assume_32_bit_indexing': False}}, 'local_cache_dir': None, 'fast_moe_cold_start': False, "
    "'static_all_moe_layers': []}}, "
    "kernel_config=KernelConfig(ir_op_priority=IrOpPriorityConfig(rms_norm=['native'], "
    "fused_add_rms_norm=['native']), enable_flashinfer_autotune=True, enable_cutedsl_warmup=True, "
    "enable_bf16x3_router_gemm=False, moe_backend='auto', linear_backend='auto')"
)
