from zturbo.guardrails import BASE, TURBO, UNKNOWN, defaults_for, model_variant, warnings_for
from zturbo.request import GenerationRequest


def test_variant_from_name_and_metadata() -> None:
    assert model_variant("models/z_image_turbo_bf16.safetensors") == TURBO
    assert model_variant("Z-Image-Base.safetensors") == BASE
    assert model_variant("dit.safetensors", {"modelspec.title": "Z-Image-Turbo"}) == TURBO
    assert model_variant("dit.safetensors") == UNKNOWN


def test_defaults_per_variant() -> None:
    assert (defaults_for(TURBO).steps, defaults_for(TURBO).cfg) == (8, 1.0)
    base = defaults_for(BASE)
    assert 25 <= base.steps <= 50 and base.cfg == 4.0


def test_negative_at_cfg1_warns() -> None:
    assert any("negative" in w for w in warnings_for(GenerationRequest("a", negative="b"), BASE))
    assert warnings_for(GenerationRequest("a", negative="b", cfg=4.0), BASE) == []


def test_turbo_above_cfg1_warns() -> None:
    assert any("Turbo" in w for w in warnings_for(GenerationRequest("a", cfg=3.0), TURBO))
    assert warnings_for(GenerationRequest("a", cfg=3.0), BASE) == []
    assert warnings_for(GenerationRequest("a"), TURBO) == []


def test_base_defaults_fill_only_what_was_not_given() -> None:
    from zturbo.guardrails import apply_defaults

    request = apply_defaults(GenerationRequest("a", steps=12), BASE, {"steps"})
    assert (request.steps, request.cfg) == (12, 4.0)
    assert apply_defaults(GenerationRequest("a"), TURBO, set()) == GenerationRequest("a")
