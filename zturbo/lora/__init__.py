"""LoRA files for Z-Image: every published layout in, weight patches on the reference layouts out.

Pure: safetensors tensors in, patches out (imports only zturbo.errors, zturbo.checkpoints.reader, torch,
safetensors). Applying the patches to a loaded model is the engine's job.

Contract
--------
``read_lora(path, *, dit_shapes=None, text_encoder_shapes=None) -> LoraFile``
    Detects the layout by content (never by file name), maps every key onto the reference models,
    checks shapes against the given reference shapes (parameter name → shape; when given, a patch that
    does not fit is one ``ModelFileError`` naming the file and what was expected), builds the patches.
    Pickles are refused unread and corrupt files named (``zturbo.checkpoints.reader.open_checkpoint``);
    a LoRA for another family (SDXL, Flux, ...) is named as such.

``LoraFile``: ``.path``, ``.patches: list[WeightPatch]``, ``.report: LoraReport``, ``.metadata`` (the
    safetensors metadata), ``.sha256()``, ``.short_hash()`` (10 hex digits, as A1111/ComfyUI show).

``WeightPatch`` (frozen):
    ``component``: "dit" or "text_encoder".
    ``targets``: parameter names in the REFERENCE layout: for the DiT, diffusers' ZImageTransformer2DModel
        state-dict names ("layers.3.attention.to_q.weight", "layers.3.attention.to_out.0.weight",
        "layers.3.feed_forward.w1.weight", "layers.3.adaLN_modulation.0.weight", "noise_refiner.0.…",
        "context_refiner.0.…", "all_x_embedder.2-1.weight", "all_final_layer.2-1.linear.weight",
        "all_final_layer.2-1.adaLN_modulation.1.weight", "cap_embedder.1.weight", "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.weight", biases ".bias", norms, "x_pad_token"); for the text encoder,
        transformers' Qwen3Model names ("layers.3.self_attn.q_proj.weight").
        Several targets: the delta's rows are split across them in order (a native ``attention.qkv`` patch
        → to_q, to_k, to_v); ``rows`` gives each target's row count.
    ``adapter``: one of ``LoRA``, ``LoKr``, ``LoHa``, ``Full`` (zturbo.lora.adapters), holding the file's
        tensors as stored (CPU).
    ``source_keys``: the file keys this patch consumed.
    ``rows``: delta rows per target (from the given shapes, else equal parts).

Adapter (every class):
    ``shape``: shape of the full delta (rows = sum of the targets' rows).
    ``delta(dtype=torch.float32, device=None)``: ΔW including alpha/rank (or LyCORIS) scaling, not the
        user's strength.
    ``factors()``: ``(up_scaled [out, r], down [r, in])`` when ΔW = up_scaled @ down exactly (plain LoRA,
        no DoRA), else None: the low-rank side path for GGUF/streamed weights.
    ``merged(weight, strength)``: the patched weight in float32 from ``weight`` (the concatenated targets'
        base weight): ``weight + ΔW·strength`` (as ComfyUI: raw product × (strength·scale)); with DoRA,
        W' = m·(W + ΔW)/‖W + ΔW‖ per row (PEFT ``lora_magnitude_vector``, ``dora_scale`` (out, 1)) or
        per column (``dora_scale`` (1, in), LyCORIS's default), and strength as ComfyUI defines it:
        W + strength·(W' − W). See ``adapters.Dora`` for where ComfyUI's current release differs.
    ``rank``, ``alpha`` (None: scale 1), ``scale``, ``kind`` ("lora" | "lokr" | "loha" | "diff"),
        ``dora`` (a ``Dora`` or None).

``LoraReport``: format, producer, adapter kinds, ranks, alphas, coverage by layer group ("30 layers
    (0–29) × attention q/k/v/out, ffn w1/w2/w3"), and ``unmatched``: every key not used, by name, with
    the reason. ``str(report)`` is what ``zturbo lora inspect`` prints.

``convert_lora(lora, to="comfy" | "diffusers") -> Converted`` (zturbo.lora.convert) re-writes a LoRA in
    another layout, exactly where that layout can represent it, and lists what it refused.
"""
