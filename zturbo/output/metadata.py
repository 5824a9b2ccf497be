"""Generation metadata in a PNG: our `parameters` text and ComfyUI's `prompt` API graph.

`parameters` follows the A1111 layout other tools already parse (prompt, "Negative prompt:", then
"Key: value" pairs); the `prompt` chunk is the equivalent ComfyUI API graph (the official Z-Image-Turbo
template's nodes), so both zturbo (`generate --from`) and ComfyUI (drag the PNG in) reproduce the image.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from zturbo.errors import InputError
from zturbo.request import GenerationRequest, LoraChoice


@dataclass(frozen=True)
class ModelFiles:
    """Component names as ComfyUI loaders see them (relative to their folder) and short hashes."""

    dit: str
    text_encoder: str
    vae: str
    dit_hash: str = ""
    text_encoder_hash: str = ""
    vae_hash: str = ""
    dit_weight_dtype: str = "default"  # UNETLoader's weight_dtype: "default" or an fp8 type quantized on load


def parameters_text(request: GenerationRequest, models: ModelFiles, batch_index: int = 0) -> str:
    pairs = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.scheduler,
        "CFG scale": _num(request.cfg),
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Shift": _num(request.shift),
        "Batch size": request.batch,
        "Batch pos": batch_index,
        "Model": models.dit,
        "Model hash": models.dit_hash,
        "Weight dtype": "" if models.dit_weight_dtype == "default" else models.dit_weight_dtype,
        "Text encoder": models.text_encoder,
        "Text encoder hash": models.text_encoder_hash,
        "VAE": models.vae,
        "VAE hash": models.vae_hash,
        "Version": "zturbo",
    }
    if request.denoise != 1.0:
        pairs["Denoising strength"] = _num(request.denoise)
    pairs.update(_image_pairs(request))
    pairs.update(lora_pairs(request.loras))
    if request.variety > 0:  # only when on: an image without it keeps the same text
        pairs.update({"Variety": _num(request.variety), "Variety steps": _num(request.variety_steps)})
    if request.enhanced_from:  # the prompt is the enhancer's; the idea it came from, for the record
        pairs["Enhanced from"] = request.enhanced_from
    tail = ", ".join(f"{k}: {_quote(str(v))}" for k, v in pairs.items() if v != "")
    return f"{request.prompt}\nNegative prompt: {request.negative}\n{tail}"


IMAGE_KEYS = {  # parameters-text key → (request field, type)
    "Init image": ("image", str),
    "Mask": ("mask", str),
    "Mask grow": ("mask_grow", int),
    "Mask blur": ("mask_blur", int),
    "Hires upscale": ("hires_scale", float),
    "Hires steps": ("hires_steps", int),
    "Hires denoising strength": ("hires_denoise", float),
    "Hires upscaler": ("upscale_model", str),
}


def _image_pairs(request: GenerationRequest) -> dict[str, object]:
    """The image-input settings, only those in use (a text-to-image PNG's text is unchanged)."""
    used = []
    if request.image:
        used.append("Init image")
    if request.mask:
        used += ["Mask", "Mask grow", "Mask blur"]
    if request.hires_scale > 1:
        used += ["Hires upscale", "Hires steps", "Hires denoising strength"]
        used += ["Hires upscaler"] if request.upscale_model else []
    values = {key: getattr(request, IMAGE_KEYS[key][0]) for key in used}
    return {k: _num(v) if isinstance(v, float) else v for k, v in values.items()}


LORAS_KEY, LORA_HASHES_KEY = "LoRAs", "Lora hashes"


def lora_pairs(loras: tuple[LoraChoice, ...]) -> dict[str, str]:
    """`LoRAs: "a.safetensors:0.8, b.safetensors:1:0.5"` (the --lora syntax, in order) and A1111's
    `Lora hashes: "a: 0123456789ab, b: ..."` (name without extension: content hash)."""
    if not loras:
        return {}
    hashes = ", ".join(f"{_stem(c.name)}: {c.hash}" for c in loras if c.hash)
    return {LORAS_KEY: ", ".join(lora_spec(c) for c in loras), LORA_HASHES_KEY: hashes}


def lora_spec(choice: LoraChoice) -> str:
    """`name:strength[:clip strength]`, what `LoraChoice.parse` reads."""
    clip = "" if choice.clip_strength is None else ":" + _num(choice.clip_strength)
    return f"{choice.name}:{_num(choice.strength)}{clip}"


def _stem(name: str) -> str:
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def parse_loras(pairs: dict[str, str]) -> tuple[LoraChoice, ...]:
    """Inverse of `lora_pairs` (hashes matched by name, in order)."""
    if not pairs.get(LORAS_KEY):
        return ()
    hashes = [part.rsplit(": ", 1) for part in pairs.get(LORA_HASHES_KEY, "").split(", ") if ": " in part]
    by_name = {name.strip(): digest.strip() for name, digest in hashes}
    choices = [LoraChoice.parse(part) for part in pairs[LORAS_KEY].split(", ")]
    return tuple(replace(c, hash=by_name.get(_stem(c.name), "")) for c in choices)


def _num(value: float) -> str:
    return f"{value:g}"


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> tuple[GenerationRequest, int]:
    """Inverse of parameters_text → (request, batch position)."""
    lines = text.rstrip("\n").split("\n")
    if len(lines) < 2:
        raise InputError("the PNG's parameters text has no settings line")
    settings_line = lines[-1]
    body = lines[:-1]
    negative = ""
    for i, line in enumerate(body):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:") :].strip(), *body[i + 1 :]])
            body = body[:i]
            break
    pairs = _settings(settings_line)
    try:
        width, height = (int(v) for v in pairs["Size"].split("x"))
        request = GenerationRequest(
            prompt="\n".join(body),
            negative=negative,
            width=width,
            height=height,
            steps=int(pairs["Steps"]),
            cfg=float(pairs["CFG scale"]),
            sampler=pairs["Sampler"],
            scheduler=pairs.get("Schedule type", "simple"),
            shift=float(pairs.get("Shift", 3.0)),
            seed=int(pairs["Seed"]),
            batch=int(pairs.get("Batch size", 1)),
            denoise=float(pairs.get("Denoising strength", 1.0)),
        )
        image_fields = {f: kind(pairs[k]) for k, (f, kind) in IMAGE_KEYS.items() if k in pairs}
        request = replace(
            request, **image_fields, loras=parse_loras(pairs), enhanced_from=pairs.get("Enhanced from", "")
        )
        if "Variety" in pairs:
            variety = float(pairs["Variety"])
            request = replace(request, variety=variety, variety_steps=float(pairs.get("Variety steps", 0.3)))
    except (KeyError, ValueError) as exc:
        raise InputError(f"the PNG's parameters text lacks or garbles a setting ({exc})") from exc
    return request, int(pairs.get("Batch pos", 0))


def _settings(line: str) -> dict[str, str]:
    """The "Key: value, ..." pairs of a parameters text's last line (JSON-quoted values unquoted)."""
    pairs = {m.group(1).strip(): m.group(2) for m in _PAIR.finditer(line) if m.group(1).strip()}
    return {k: (json.loads(v) if v.startswith('"') else v.strip()) for k, v in pairs.items()}


def weight_dtype_from_chunks(chunks: dict[str, str]) -> str:
    """The diffusion model's load-time weight dtype a PNG records (UNETLoader's `weight_dtype`).

    zturbo writes `Weight dtype` only when it is not "default"; a ComfyUI graph names it on its
    UNETLoader. Anything else (older files, other tools) means "default".
    """
    if "parameters" in chunks:
        found = _settings(chunks["parameters"].rstrip("\n").split("\n")[-1]).get("Weight dtype")
        if found:
            return found
    if "prompt" in chunks:
        try:
            graph = json.loads(chunks["prompt"])
        except json.JSONDecodeError:
            return "default"
        loaders = (
            [n for n in graph.values() if isinstance(n, dict) and n.get("class_type") == "UNETLoader"]
            if isinstance(graph, dict)
            else []
        )
        if len(loaders) == 1:
            return str(loaders[0].get("inputs", {}).get("weight_dtype", "default"))
    return "default"


def api_graph(
    request: GenerationRequest,
    models: ModelFiles,
    filename_prefix: str = "zturbo",
    image_size: tuple[int, int] | None = None,
) -> dict:
    """The ComfyUI API-format graph that produces the same image (official template's node types).

    With an init image (`request.image` names it in the input folder; `image_size` is its width and
    height, which decides crop vs scale) the graph gains the image, mask and hires nodes (`image_graph`).
    """
    graph = _text_graph(request, models, filename_prefix)
    add_lora_nodes(graph, request.loras)
    if request.image or request.hires_scale > 1:
        from zturbo.output.image_graph import add_image_nodes

        add_image_nodes(graph, request, image_size)
    if request.variety > 0 and "8" in graph:  # the first pass only: a hires refine keeps the plain MODEL
        inputs = {"model": graph["8"]["inputs"]["model"], "strength": request.variety,
                  "steps_fraction": request.variety_steps}  # fmt: skip
        graph[VARIETY_NODE_ID] = {"class_type": "ZTurboSeedVariety", "inputs": inputs}
        graph["8"]["inputs"]["model"] = [VARIETY_NODE_ID, 0]
    return graph


VARIETY_NODE_ID = "40"


LORA_NODE_IDS = 50  # LoraLoader nodes are "50", "51", ... between the loaders and their users


def add_lora_nodes(graph: dict, loras: tuple[LoraChoice, ...]) -> None:
    """UNETLoader/CLIPLoader → LoraLoader × n → ModelSamplingAuraFlow / CLIPTextEncode, in order."""
    model, clip = ["1", 0], ["2", 0]
    for i, lora in enumerate(loras):
        node_id = str(LORA_NODE_IDS + i)
        graph[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {"model": model, "clip": clip, "lora_name": lora.name, "strength_model": lora.strength,
                       "strength_clip": lora.text_encoder_strength},
        }  # fmt: skip
        model, clip = [node_id, 0], [node_id, 1]
    for node in graph.values():
        inputs = node["inputs"]
        if inputs.get("model") == ["1", 0] and node["class_type"] != "LoraLoader":
            inputs["model"] = model
        if inputs.get("clip") == ["2", 0] and node["class_type"] != "LoraLoader":
            inputs["clip"] = clip


def loras_from_graph(nodes: dict, link) -> tuple[LoraChoice, ...]:
    """The LoraLoader / LoraLoaderModelOnly chain above a MODEL link, in the order they apply."""
    found: list[LoraChoice] = []
    while isinstance(link, list) and link and link[0] in nodes:
        node = nodes[link[0]]
        inputs = node.get("inputs", {})
        if node.get("class_type") in ("LoraLoader", "LoraLoaderModelOnly"):
            clip = float(inputs.get("strength_clip", 0.0)) if node["class_type"] == "LoraLoader" else 0.0
            strength = float(inputs.get("strength_model", 1.0))
            found.insert(
                0, LoraChoice(str(inputs.get("lora_name", "")), strength, None if clip == strength else clip)
            )
        link = inputs.get("model")
    return tuple(found)


def _text_graph(request: GenerationRequest, models: ModelFiles, filename_prefix: str) -> dict:
    negative = (
        {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}}
        if request.cfg == 1.0 and not request.negative
        else {"class_type": "CLIPTextEncode", "inputs": {"text": request.negative, "clip": ["2", 0]}}
    )
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": models.dit, "weight_dtype": models.dit_weight_dtype},
        },
        "2": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": models.text_encoder, "type": "lumina2", "device": "default"},
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": models.vae}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": request.shift}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": request.prompt, "clip": ["2", 0]}},
        "6": negative,
        "7": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": request.width, "height": request.height, "batch_size": request.batch},
        },
        "8": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": request.seed,
                "steps": request.steps,
                "cfg": request.cfg,
                "sampler_name": request.sampler,
                "scheduler": request.scheduler,
                "positive": ["5", 0],
                "negative": ["6", 0],
                "latent_image": ["7", 0],
                "denoise": request.denoise,
            },
        },
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": filename_prefix}},
    }


def request_from_api_graph(graph: dict) -> GenerationRequest:
    """Best-effort settings from a ComfyUI API graph with one KSampler (e.g. a ComfyUI-made PNG)."""
    nodes = {nid: n for nid, n in graph.items() if isinstance(n, dict)}
    samplers = [n for n in nodes.values() if n.get("class_type") in ("KSampler", "KSamplerAdvanced")]
    if len(samplers) != 1:
        raise InputError(f"expected one KSampler in the PNG's prompt graph, found {len(samplers)}")
    ks = samplers[0]["inputs"]

    def source(link, wanted: tuple[str, ...]):
        while isinstance(link, list) and link[0] in nodes:
            node = nodes[link[0]]
            if node["class_type"] in wanted:
                return node["inputs"]
            link = next((v for v in node["inputs"].values() if isinstance(v, list)), None)
        return {}

    latent = source(ks.get("latent_image"), ("EmptySD3LatentImage", "EmptyLatentImage"))
    request = GenerationRequest(
        prompt=str(source(ks.get("positive"), ("CLIPTextEncode",)).get("text", "")),
        width=int(latent.get("width", 1024)),
        height=int(latent.get("height", 1024)),
        batch=int(latent.get("batch_size", 1)),
        steps=int(ks.get("steps", 8)),
        cfg=float(ks.get("cfg", 1.0)),
        sampler=str(ks.get("sampler_name", "res_multistep")),
        scheduler=str(ks.get("scheduler", "simple")),
        seed=int(ks.get("seed", ks.get("noise_seed", 0))),
        shift=float(source(ks.get("model"), ("ModelSamplingAuraFlow",)).get("shift", 3.0)),
        denoise=float(ks.get("denoise", 1.0)),
    )
    negative = source(ks.get("negative"), ("CLIPTextEncode", "ConditioningZeroOut"))
    loras = loras_from_graph(nodes, ks.get("model"))
    variety = source(ks.get("model"), ("ZTurboSeedVariety",))
    if variety:
        request = replace(
            request,
            variety=float(variety.get("strength", 0.0)),
            variety_steps=float(variety.get("steps_fraction", 0.3)),
        )
    return replace(request, negative=str(negative.get("text", "")), loras=loras)
