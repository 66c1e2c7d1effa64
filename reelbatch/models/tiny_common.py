"""Parts the tiny pipelines share: locally trained tokenizers and a small CLIP vision tower.

Everything here is built from code, offline and deterministically: the tokenizers are trained on a fixed corpus
(training is deterministic given the input) and the models take their random weights from the caller's seed.
"""

from __future__ import annotations

# A fixed corpus keeps the tokenizers identical on every machine.
CORPUS = """
a cat walks on a sunny street, a dog runs through a green park at dawn, waves crash on a rocky shore
a red car drives through the neon city at night, snow falls over a quiet mountain village
a timelapse of clouds over the desert, an astronaut floats inside a space station, slow motion rain
close up of a flower opening, aerial view of a river delta, a robot paints a portrait in a studio
blurry, low quality, distorted, watermark, text, static, jpeg artifacts, worst quality, ugly
describe the video by detailing the following aspects: the main content and theme of the video,
the color, shape, size, texture, quantity, text, and spatial relationships of the objects,
actions, events, behaviors temporal relationships, physical movement changes of the objects,
background environment, light, style and atmosphere, camera angles, movements, and transitions
"""

# The chat markers of the Llama 3 prompt templates the HunyuanVideo pipelines wrap every prompt in.
CHAT_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>"]


def train_tokenizer(vocab_size: int = 384):
    """The byte-level BPE tokenizer of tiny-wan and tiny-hunyuan (their recipe: do not change it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE never produces an unknown token: any prompt, in any script, encodes.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    return fast


def train_chat_tokenizer(templates: list[dict]):
    """A byte-level BPE tokenizer that splits the HunyuanVideo prompt templates the way Llama 3's tokenizer does.

    Those pipelines cut the text encoder's output at offsets counted in Llama 3 tokens (``crop_start``, the
    ``<image>`` position, the 4 tokens before the assistant turn). To keep those cuts meaningful the tokenizer
    prepends a BOS, keeps the chat markers whole, isolates newline runs and single digits, and is trained on the
    templates themselves so every template word is one token; ``check_template`` verifies the result.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<pad>", "</s>", "<unk>", "<s>", *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n") + [t["template"].replace("{}", "") for t in templates], trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )


def check_template(tokenizer, template: dict) -> None:
    """Fail the build, not a later run, if the tokenizer would make the pipeline crop the wrong tokens."""
    prefix = tokenizer(template["template"].split("{}")[0]).input_ids
    problems = []
    if "crop_start" in template and len(prefix) != template["crop_start"]:
        problems.append(f"prompt starts at token {len(prefix)}, the pipeline crops at {template['crop_start']}")
    if "image_emb_start" in template:
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        if image_id not in prefix or prefix.index(image_id) != template["image_emb_start"]:
            problems.append(f"<image> is not token {template['image_emb_start']}")
    if problems:
        raise RuntimeError("tiny chat tokenizer does not fit the prompt template: " + "; ".join(problems))


def clip_vision_config(hidden_size: int, image_size: int, patch_size: int):
    """A 2-layer CLIP vision tower: (image_size / patch_size)**2 patch tokens plus one class token."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,  # the pipelines read hidden_states[-2]: the first layer's output
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def clip_image_processor(size: int):
    """CLIP preprocessing at ``size`` pixels square (the processor resizes any input image to it)."""
    # The PIL backend by name: plain CLIPImageProcessor picks torchvision when it is installed, which would make
    # the saved folder (and its resizing) depend on the machine that built it.
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
