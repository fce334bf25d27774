"""The shipped example workflows, written with the host's node definitions.

Regenerate with (the pack's tests then run each one in the host):

    COMFYUI_PATH=/path/to/ComfyUI python -m tests.host.example_workflows

Every workflow uses the standard file names users already have, carries download addresses for the models in the
loaders' `properties.models` (the frontend offers them when a file is missing), and starts with a Note.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.host.workflow_builder import Builder, Node

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
SD15_CKPT, SDXL_CKPT = "v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
H94 = "https://huggingface.co/h94/IP-Adapter/resolve/main/"
MODELS = {
    SD15_CKPT: ("https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                "v1-5-pruned-emaonly.safetensors", "checkpoints"),
    SDXL_CKPT: ("https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
                "checkpoints"),
    VIT_H: (H94 + "models/image_encoder/model.safetensors", "clip_vision"),
    "ip-adapter_sd15.safetensors": (H94 + "models/ip-adapter_sd15.safetensors", "ipadapter"),
    "ip-adapter-plus_sd15.safetensors": (H94 + "models/ip-adapter-plus_sd15.safetensors", "ipadapter"),
    "ip-adapter_sd15_light_v11.bin": (H94 + "models/ip-adapter_sd15_light_v11.bin", "ipadapter"),
    "ip-adapter-plus_sdxl_vit-h.safetensors": (H94 + "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
                                               "ipadapter"),
    "control_v11p_sd15_canny_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
        "control_v11p_sd15_canny_fp16.safetensors", "controlnet"),
}
NEGATIVE = "blurry, low quality, deformed, watermark, text"
SAMPLER = dict(seed=42, steps=25, cfg=6.5, sampler_name="dpmpp_2m", scheduler="karras")


def _models(*names: str) -> list[dict]:
    return [{"name": n, "url": MODELS[n][0], "directory": MODELS[n][1]} for n in names]


class Graph:
    """The common chain of every example: checkpoint, text prompts, latent, sampler, decode, save."""

    def __init__(self, note: str, checkpoint: str = SD15_CKPT, size: tuple[int, int] = (512, 512),
                 positive: str = "a photo of a cat, best quality", negative: str = NEGATIVE) -> None:
        self.b = Builder()
        self.b.note(note, column=0)
        self.ckpt = self.b.node("CheckpointLoaderSimple", 0, models=_models(checkpoint), ckpt_name=checkpoint)
        self.clip_source: tuple[Node, int] = (self.ckpt, 1)
        self.positive_text, self.negative_text, self.size = positive, negative, size

    def clip_vision(self, name: str = VIT_H) -> Node:
        return self.b.node("CLIPVisionLoader", 0, models=_models(name), clip_name=name)

    def adapter(self, name: str) -> Node:
        return self.b.node("LoadIPAdapter", 0, models=_models(name), ipadapter_file=name)

    def image_prompt(self, clip_vision: Node | tuple[Node, int], image: str, column: int = 2,
                     **options) -> tuple[Node, Node]:
        source = clip_vision if isinstance(clip_vision, tuple) else (clip_vision, 0)
        loaded = self.b.node("LoadImage", 1, image=image)
        encode = self.b.node("EncodeImagePrompt", column, **options)
        self.b.link(*source, encode, "clip_vision")
        self.b.link(loaded, "IMAGE", encode, "image")
        return loaded, encode

    def apply(self, model: tuple[Node, int], adapter: tuple[Node, int], prompt: Node, column: int = 3,
              mode: int = 0, **widgets) -> Node:
        node = self.b.node("ApplyIPAdapter", column, mode=mode, **widgets)
        self.b.link(model[0], model[1], node, "model")
        self.b.link(adapter[0], adapter[1], node, "ipadapter")
        self.b.link(prompt, 0, node, "image_prompt")
        return node

    def text(self, text: str, column: int = 1) -> Node:
        node = self.b.node("CLIPTextEncode", column, width=400, text=text)
        self.b.link(*self.clip_source, node, "clip")
        return node

    def conditioning(self) -> tuple[Node, Node]:
        return self.text(self.positive_text), self.text(self.negative_text)

    def empty_latent(self) -> Node:
        return self.b.node("EmptyLatentImage", 1, width=self.size[0], height=self.size[1], batch_size=1)

    def sample(self, model: Node, positive: tuple[Node, int], negative: tuple[Node, int], latent: tuple[Node, int],
               column: int = 4, denoise: float = 1.0, prefix: str = "ip_adapter", mode: int = 0) -> Node:
        sampler = self.b.node("KSampler", column, mode=mode, denoise=denoise, **SAMPLER)
        self.b.link(model, 0, sampler, "model")
        self.b.link(*positive, sampler, "positive")
        self.b.link(*negative, sampler, "negative")
        self.b.link(*latent, sampler, "latent_image")
        decode = self.b.node("VAEDecode", column + 1, mode=mode)
        self.b.link(sampler, 0, decode, "samples")
        self.b.link(self.ckpt, 2, decode, "vae")
        save = self.b.node("SaveImage", column + 1, mode=mode, filename_prefix=prefix)
        self.b.link(decode, 0, save, "images")
        return sampler

    def finish_txt2img(self, model: Node, prefix: str) -> dict:
        positive, negative = self.conditioning()
        self.sample(model, (positive, 0), (negative, 0), (self.empty_latent(), 0), prefix=prefix)
        return self.b.workflow()


def sd15_basic() -> dict:
    g = Graph("Basic SD1.5 image prompt.\n\nThe reference image (Load Image) is encoded with the ViT-H CLIP vision "
              "model and added to the model by Apply IP-Adapter, next to the text prompt.\n\nFiles: "
              f"models/checkpoints/{SD15_CKPT}, models/clip_vision/{VIT_H}, "
              "models/ipadapter/ip-adapter_sd15.safetensors.\nTry weight 0.5-1.0; lower it if the result copies "
              "the reference too closely.")
    _, prompt = g.image_prompt(g.clip_vision(), "example.png")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter_sd15.safetensors"), 0), prompt, weight=0.8)
    return g.finish_txt2img(apply, "ip_adapter_sd15")


def sdxl_basic() -> dict:
    g = Graph("Basic SDXL image prompt (1024x1024).\n\nSame chain as SD1.5, with the SDXL plus adapter "
              "(ip-adapter-plus_sdxl_vit-h, ViT-H encoder; closer to the reference than the standard "
              "ip-adapter_sdxl_vit-h, which loads the same way). For ip-adapter_sdxl (ViT-bigG) load "
              "CLIP-ViT-bigG-14-laion2B-39B-b160k instead: a wrong pair fails with a message that says which file "
              "to load.\n\nFiles: models/checkpoints/sd_xl_base_1.0.safetensors, models/clip_vision/" + VIT_H +
              ", models/ipadapter/ip-adapter-plus_sdxl_vit-h.safetensors.", checkpoint=SDXL_CKPT, size=(1024, 1024))
    _, prompt = g.image_prompt(g.clip_vision(), "example.png")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter-plus_sdxl_vit-h.safetensors"), 0), prompt, weight=0.6)
    return g.finish_txt2img(apply, "ip_adapter_sdxl")


def sdxl_style_transfer() -> dict:
    g = Graph("SDXL style transfer.\n\nweight_type 'style transfer' patches only the style layer (up_blocks.0 "
              "attention 1), so the reference's colours and textures carry over while the text decides the "
              "subject. 'strong style transfer' adds every other layer except the composition one.\n\nFiles: "
              f"sd_xl_base_1.0, {VIT_H}, ip-adapter-plus_sdxl_vit-h.safetensors.", checkpoint=SDXL_CKPT,
              size=(1024, 1024), positive="a lighthouse on a cliff at dusk")
    _, prompt = g.image_prompt(g.clip_vision(), "style_reference.png")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter-plus_sdxl_vit-h.safetensors"), 0), prompt, weight=1.0,
                    weight_type="style transfer")
    return g.finish_txt2img(apply, "ip_adapter_sdxl_style")


def presets() -> dict:
    g = Graph("Presets: no adapter or CLIP vision file to pick.\n\nLoad IP-Adapter Preset reads the model's family "
              "(SD1.5 or SDXL) and loads the preset's official adapter and the CLIP vision model it needs from "
              "models/ipadapter and models/clip_vision (any folder of extra_model_paths.yaml too). If a file is "
              "missing, the error lists the accepted names, the folders searched and the download address.\n\n"
              "Here: 'plus' = ip-adapter-plus_sd15 + ViT-H.")
    preset = g.b.node("LoadIPAdapterPreset", 1, preset="plus")
    g.b.link(g.ckpt, 0, preset, "model")
    _, prompt = g.image_prompt((preset, 1), "example.png")
    apply = g.apply((g.ckpt, 0), (preset, 0), prompt, weight=0.8)
    return g.finish_txt2img(apply, "ip_adapter_preset")


def image_and_text() -> dict:
    g = Graph("Image + text (multimodal).\n\nThe reference gives the subject and look; the text changes what it "
              "does and where. The light adapter (ip-adapter_sd15_light_v11) leaves more room to the text; "
              "'ease out' weights the deeper layers more, another way to let the prompt lead.",
              positive="the cat from the reference wearing a tiny wizard hat, on a beach at sunset")
    _, prompt = g.image_prompt(g.clip_vision(), "example.png")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter_sd15_light_v11.bin"), 0), prompt, weight=1.0,
                    weight_type="ease out")
    return g.finish_txt2img(apply, "ip_adapter_multimodal")


def img2img() -> dict:
    g = Graph("img2img with an image prompt.\n\nThe starting picture is VAE-encoded and only partly re-noised "
              "(denoise 0.6): its layout stays, while the reference (a second Load Image) steers the look. Lower "
              "denoise keeps more of the starting picture.")
    _, prompt = g.image_prompt(g.clip_vision(), "reference.png")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter-plus_sd15.safetensors"), 0), prompt, weight=0.7)
    start = g.b.node("LoadImage", 1, image="example.png")
    encode = g.b.node("VAEEncode", 2)
    g.b.link(start, "IMAGE", encode, "pixels")
    g.b.link(g.ckpt, 2, encode, "vae")
    positive, negative = g.conditioning()
    g.sample(apply, (positive, 0), (negative, 0), (encode, 0), denoise=0.6, prefix="ip_adapter_img2img")
    return g.b.workflow()


def inpainting() -> dict:
    g = Graph("Inpainting with an image prompt.\n\nPaint the area to change in Load Image (right click > Open in "
              "MaskEditor). Set Latent Noise Mask limits sampling to that area, and the same mask goes to Apply "
              "IP-Adapter's attn_mask, so the reference acts only there.",
              positive="a red knitted scarf")
    _, prompt = g.image_prompt(g.clip_vision(), "reference.png")
    picture = g.b.node("LoadImage", 1, image="example.png")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter-plus_sd15.safetensors"), 0), prompt, weight=0.8)
    g.b.link(picture, "MASK", apply, "attn_mask")
    encode = g.b.node("VAEEncode", 2)
    g.b.link(picture, "IMAGE", encode, "pixels")
    g.b.link(g.ckpt, 2, encode, "vae")
    masked = g.b.node("SetLatentNoiseMask", 3)
    g.b.link(encode, 0, masked, "samples")
    g.b.link(picture, "MASK", masked, "mask")
    positive, negative = g.conditioning()
    g.sample(apply, (positive, 0), (negative, 0), (masked, 0), prefix="ip_adapter_inpaint")
    return g.b.workflow()


def controlnet_lora() -> dict:
    g = Graph("ControlNet + LoRA + image prompt.\n\nThe LoRA patches the model first (any order works: Apply "
              "IP-Adapter and LoRA both clone the model). ControlNet works on the conditioning: load a prepared "
              "control image (here a canny edge map) and the matching ControlNet. Replace my_lora_sd15.safetensors "
              "with any SD1.5 LoRA of yours.")
    lora = g.b.node("LoraLoader", 1, lora_name="my_lora_sd15.safetensors", strength_model=0.8, strength_clip=0.8)
    g.b.link(g.ckpt, 0, lora, "model")
    g.b.link(g.ckpt, 1, lora, "clip")
    g.clip_source = (lora, 1)
    _, prompt = g.image_prompt(g.clip_vision(), "example.png")
    apply = g.apply((lora, 0), (g.adapter("ip-adapter-plus_sd15.safetensors"), 0), prompt, weight=0.7)
    net = g.b.node("ControlNetLoader", 0, models=_models("control_v11p_sd15_canny_fp16.safetensors"),
                   control_net_name="control_v11p_sd15_canny_fp16.safetensors")
    edges = g.b.node("LoadImage", 1, image="canny_edges.png")
    positive, negative = g.conditioning()
    control = g.b.node("ControlNetApplyAdvanced", 3, strength=0.8, start_percent=0.0, end_percent=0.8)
    for source, name in ((positive, "positive"), (negative, "negative"), (net, "control_net"), (edges, "image")):
        g.b.link(source, 0, control, name)
    g.sample(apply, (control, 0), (control, 1), (g.empty_latent(), 0), prefix="ip_adapter_controlnet_lora")
    return g.b.workflow()


def two_references() -> dict:
    g = Graph("Two stacked references.\n\nEach Apply IP-Adapter adds its own reference; chained, their image terms "
              "add up on every layer. Here the first gives the subject (linear), the second only the style "
              "(style transfer). To attend to several images jointly instead, give one Encode Image Prompt a batch.")
    clip = g.clip_vision()
    adapter = g.adapter("ip-adapter-plus_sd15.safetensors")
    _, subject = g.image_prompt(clip, "example.png")
    _, style = g.image_prompt(clip, "style_reference.png")
    first = g.apply((g.ckpt, 0), (adapter, 0), subject, weight=0.7)
    second = g.apply((first, 0), (adapter, 0), style, weight=0.6, weight_type="style transfer")
    return g.finish_txt2img(second, "ip_adapter_two_references")


def style_composition() -> dict:
    g = Graph("Style & composition from two images.\n\nThe style prompt drives the style layers, the composition "
              "prompt the composition layers; each weight moves only its own image. expand_style puts the style on "
              "every layer except the composition ones. Here on SD1.5 (the old pack allowed SDXL only); on SDXL use "
              "sd_xl_base_1.0 with ip-adapter-plus_sdxl_vit-h, nothing else changes.",
              positive="a cottage in a forest")
    clip = g.clip_vision()
    adapter = g.adapter("ip-adapter-plus_sd15.safetensors")
    _, style = g.image_prompt(clip, "style_reference.png")
    _, composition = g.image_prompt(clip, "composition_reference.png")
    node = g.b.node("ApplyIPAdapterStyleComposition", 3, weight_style=1.0, weight_composition=0.8)
    g.b.link(g.ckpt, 0, node, "model")
    g.b.link(adapter, 0, node, "ipadapter")
    g.b.link(style, 0, node, "style_prompt")
    g.b.link(composition, 0, node, "composition_prompt")
    return g.finish_txt2img(node, "ip_adapter_style_composition")


def regional() -> dict:
    g = Graph("Regional prompts: two references, two masks (768x512).\n\nThe left half gets the first reference "
              "and its text, the right half the second. Each mask goes to Apply IP-Adapter's attn_mask and to "
              "Conditioning (Set Mask) for the matching prompt; a global prompt describes the whole picture. Masks "
              "must have the image's aspect ratio (draw your own in Load Image's mask editor if you like).",
              size=(768, 512), positive="two animals sitting in a park, photo")
    clip = g.clip_vision()
    adapter = g.adapter("ip-adapter-plus_sd15.safetensors")
    canvas = g.b.node("SolidMask", 1, value=0.0, width=768, height=512)
    half = g.b.node("SolidMask", 1, value=1.0, width=384, height=512)
    masks = []
    for x in (0, 384):
        mask = g.b.node("MaskComposite", 2, x=x, y=0, operation="add")
        g.b.link(canvas, 0, mask, "destination")
        g.b.link(half, 0, mask, "source")
        masks.append(mask)
    model: tuple[Node, int] = (g.ckpt, 0)
    texts = ("a ginger cat", "a small white dog")
    positive, negative = g.conditioning()
    combined: tuple[Node, int] = (positive, 0)
    for image, mask, text in zip(("left_reference.png", "right_reference.png"), masks, texts):
        _, prompt = g.image_prompt(clip, image)
        apply = g.apply(model, (adapter, 0), prompt, weight=0.8)
        g.b.link(mask, 0, apply, "attn_mask")
        model = (apply, 0)
        region = g.b.node("ConditioningSetMask", 3, strength=1.0, set_cond_area="default")
        g.b.link(g.text(text), 0, region, "conditioning")
        g.b.link(mask, 0, region, "mask")
        merge = g.b.node("ConditioningCombine", 3)
        g.b.link(*combined, merge, "conditioning_1")
        g.b.link(region, 0, merge, "conditioning_2")
        combined = (merge, 0)
    g.sample(model[0], combined, (negative, 0), (g.empty_latent(), 0), prefix="ip_adapter_regional")
    return g.b.workflow()


def negative_noise() -> dict:
    g = Graph("Negative noise image and image preparation.\n\nNegative Image Noise turns the reference into a noisy "
              "version of itself; encoded as the negative image, it pushes sampling away from noise instead of from "
              "'no image', which often reduces burned colours. Encode Image Prompt also pads the reference to a "
              "square (nothing cropped) and sharpens it after the resize to the encoder size.")
    clip = g.clip_vision()
    reference, prompt = g.image_prompt(clip, "example.png", crop="pad", sharpening=0.3)
    noise = g.b.node("NegativeImageNoise", 1, type="dissolve", strength=0.5, blur=2, seed=7)
    g.b.link(reference, "IMAGE", noise, "image")
    g.b.link(noise, 0, prompt, "negative_image")
    apply = g.apply((g.ckpt, 0), (g.adapter("ip-adapter-plus_sd15.safetensors"), 0), prompt, weight=0.8)
    return g.finish_txt2img(apply, "ip_adapter_negative_noise")


def weighted_saved_prompts() -> dict:
    g = Graph("Weighted and saved image prompts.\n\nCombine Image Prompts merges two references (weights 1.0 and "
              "0.5, averaged in CLIP space) and Save Image Prompt stores the result in output/image_prompts. "
              "Run once; then select the muted nodes on the right (Load Image Prompt and the second sampler chain) "
              "and unmute them (Ctrl+M): Load Image Prompt reuses the saved prompt without the images or the CLIP "
              "vision model.")
    clip = g.clip_vision()
    adapter = g.adapter("ip-adapter-plus_sd15.safetensors")
    _, first = g.image_prompt(clip, "example.png")
    _, second = g.image_prompt(clip, "style_reference.png")
    combine = g.b.node("CombineImagePrompts", 3, weight_1=1.0, method="average", weight_2=0.5)
    g.b.link(first, 0, combine, "image_prompt_1")
    g.b.link(second, 0, combine, "image_prompt_2")
    save = g.b.node("SaveImagePrompt", 4, filename_prefix="image_prompts/ip")
    g.b.link(combine, 0, save, "image_prompt")
    apply = g.apply((g.ckpt, 0), (adapter, 0), combine, column=4, weight=0.8)
    positive, negative = g.conditioning()
    latent = g.empty_latent()
    g.sample(apply, (positive, 0), (negative, 0), (latent, 0), column=5, prefix="ip_adapter_combined")
    muted = 2
    saved = g.b.node("LoadImagePrompt", 7, mode=muted, image_prompt_file="image_prompts/ip_00001_.safetensors [output]")
    again = g.apply((g.ckpt, 0), (adapter, 0), saved, column=7, mode=muted, weight=0.8)
    g.sample(again, (positive, 0), (negative, 0), (latent, 0), column=8, prefix="ip_adapter_loaded", mode=muted)
    return g.b.workflow()


EXAMPLES: dict[str, Callable[[], dict]] = {
    "ip_adapter_sd15_basic": sd15_basic, "ip_adapter_sdxl_basic": sdxl_basic,
    "ip_adapter_sdxl_style_transfer": sdxl_style_transfer, "ip_adapter_presets": presets,
    "ip_adapter_image_and_text": image_and_text, "ip_adapter_img2img": img2img, "ip_adapter_inpainting": inpainting,
    "ip_adapter_controlnet_lora": controlnet_lora, "ip_adapter_two_references": two_references,
    "ip_adapter_style_composition": style_composition, "ip_adapter_regional": regional,
    "ip_adapter_negative_noise": negative_noise, "ip_adapter_weighted_saved_prompts": weighted_saved_prompts,
}


def main() -> None:
    from tests.host import comfy_env

    location = comfy_env.locate_comfyui()
    if location.path is None:
        sys.exit(location.problem or location.skip_reason)
    comfy_env.start_host(location, Path(tempfile.mkdtemp(prefix="ipadapter-workflows-")))
    comfy_env.load_pack()
    for name, build in EXAMPLES.items():
        (WORKFLOWS_DIR / f"{name}.json").write_text(json.dumps(build(), indent=1) + "\n")
        print(f"wrote workflows/{name}.json")  # noqa: T201 (a command-line tool)


if __name__ == "__main__":
    main()
