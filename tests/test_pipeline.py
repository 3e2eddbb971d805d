"""ParaUniPipeline: save/load, CFG, image input, pixel space, mismatches, gradients."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from parauni import ParaUniConditioner, ParaUniPipeline, build_tiny
from parauni.flow import flow_loss, interpolate, sample_sigmas, sigma_to_timestep

PROMPTS = ["a photo of a red circle", "two blue squares"]


def _generate(pipe, **kw):
    kw = {"num_inference_steps": 3, "output_type": "np", **kw}
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **kw).images


def test_save_load_pipeline_gives_identical_images(tiny_pipe, tmp_path):
    before = _generate(tiny_pipe)
    tiny_pipe.save_pretrained(tmp_path)
    assert list((tmp_path / "conditioner").glob("*.safetensors")), "weights are saved as safetensors"
    loaded = ParaUniPipeline.from_pretrained(tmp_path)
    np.testing.assert_array_equal(_generate(loaded), before)


def test_save_load_trainable_part_alone(tiny_pipe, tmp_path):
    cond = copy.deepcopy(tiny_pipe.conditioner)
    with torch.no_grad():
        cond.queries.add_(0.5)  # a "trained" conditioner
    cond.save_pretrained(tmp_path)
    restored = ParaUniConditioner.from_pretrained(tmp_path)
    keys = ("num_queries", "layers", "fusion", "connector_depth", "caption_channels", "prompt", "final_norm")
    assert all(restored.config[k] == cond.config[k] for k in keys)
    a = ParaUniPipeline(**{**tiny_pipe.components, "conditioner": cond})
    b = ParaUniPipeline(**{**tiny_pipe.components, "conditioner": restored})
    np.testing.assert_array_equal(_generate(a), _generate(b))
    assert not np.array_equal(_generate(a), _generate(tiny_pipe))


@torch.no_grad()
def _manual_sampling(pipe, cond, uncond, scale, steps=3):
    """The sampling loop written out: what the pipeline must compute."""
    latents = pipe.prepare_latents(cond.shape[0], 16, 16, torch.Generator().manual_seed(0), torch.float32, "cpu")
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    mask = torch.ones(cond.shape[:2], dtype=torch.long)
    for t in sched.timesteps:
        v = pipe.transformer(latents, encoder_hidden_states=cond, encoder_attention_mask=mask,
                             timestep=t.expand(cond.shape[0]), return_dict=False)[0]
        if uncond is not None:
            v_u = pipe.transformer(latents, encoder_hidden_states=uncond, encoder_attention_mask=mask,
                                   timestep=t.expand(cond.shape[0]), return_dict=False)[0]
            v = v_u + scale * (v - v_u)
        latents = sched.step(v, t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def test_guidance_one_is_the_conditional_branch_alone(tiny_pipe):
    cond = tiny_pipe.encode_prompt(PROMPTS)
    out = tiny_pipe(PROMPTS, guidance_scale=1.0, num_inference_steps=3, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(out, _manual_sampling(tiny_pipe, cond, None, 1.0), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_cfg_combines_both_branches(tiny_pipe):
    cond = tiny_pipe.encode_prompt(PROMPTS)
    uncond = tiny_pipe.encode_prompt([None]).expand(2, -1, -1)
    out = tiny_pipe(PROMPTS, guidance_scale=4.5, num_inference_steps=3, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(out, _manual_sampling(tiny_pipe, cond, uncond, 4.5), rtol=1e-4, atol=1e-4)
    neg = tiny_pipe("a red circle", negative_prompt="blurry", num_inference_steps=2, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images
    plain = tiny_pipe("a red circle", num_inference_steps=2, output_type="latent",
                      generator=torch.Generator().manual_seed(0)).images
    assert not torch.allclose(neg, plain)


def test_image_to_image_runs(tiny_pipe):
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    out = tiny_pipe(image=images, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 16, 16, 3) and np.isfinite(out).all()
    e = tiny_pipe.encode_prompt([None, None], images, instruction="Keep the image as it is.")
    assert not torch.allclose(e[0], e[1]), "the image reaches the condition"


KEEP = "Keep the image as it is."


def _scenes():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]


class _TransformerConditions:
    """Records ``encoder_hidden_states`` of every forward of ``transformer`` while in the ``with`` block."""

    def __init__(self, transformer):
        self.transformer, self.seen = transformer, []

    def __enter__(self):
        hook = lambda module, args, kwargs: self.seen.append(kwargs["encoder_hidden_states"].clone())
        self.handle = self.transformer.register_forward_pre_hook(hook, with_kwargs=True)
        return self.seen

    def __exit__(self, *exc):
        self.handle.remove()


def _edit(pipe, images, **kw):
    kw = {"num_inference_steps": 2, "output_type": "latent", "guidance_scale": 4.5, **kw}
    return pipe(image=images, generator=torch.Generator().manual_seed(0), **kw).images


@torch.no_grad()
def test_image_cfg_default_keeps_the_image_and_the_instruction(tiny_pipe):
    images = _scenes()
    cond = tiny_pipe.encode_prompt([None, None], images, instruction=KEEP)
    with _TransformerConditions(tiny_pipe.transformer) as seen:
        out = _edit(tiny_pipe, images)
    # both branches are the image with "Keep the image as it is.", run as one batch
    assert len(seen) == 2 and all(torch.equal(c, torch.cat([cond, cond])) for c in seen)
    torch.testing.assert_close(out, _edit(tiny_pipe, images, negative_prompt=KEEP), rtol=0, atol=0)
    torch.testing.assert_close(out, _edit(tiny_pipe, images, negative_prompt_embeds=cond), rtol=0, atol=0)
    # identical branches: guidance has no effect (up to the transformer's batch-size-dependent rounding)
    for scale in (1.0, 7.0):
        torch.testing.assert_close(out, _edit(tiny_pipe, images, guidance_scale=scale), rtol=1e-4, atol=1e-5)
    text_only = _edit(tiny_pipe, images, negative_prompt_embeds=tiny_pipe.encode_prompt([None]))
    assert not torch.allclose(out, text_only)


@torch.no_grad()
def test_image_cfg_with_another_instruction(tiny_pipe):
    images = _scenes()
    cond = tiny_pipe.encode_prompt([None, None], images, instruction=KEEP)
    neg = tiny_pipe.encode_prompt([None, None], images, instruction="Make it blue.")
    text_only = tiny_pipe.encode_prompt([None]).expand(2, -1, -1)
    with _TransformerConditions(tiny_pipe.transformer) as seen:
        out = _edit(tiny_pipe, images, negative_prompt="Make it blue.")
    uncond = seen[0][:2]
    assert seen[0].shape[0] == 4 and torch.equal(seen[0][2:], cond)
    assert torch.equal(uncond, neg)
    assert not torch.allclose(uncond, cond) and not torch.allclose(uncond, text_only)
    torch.testing.assert_close(out, _edit(tiny_pipe, images, negative_prompt_embeds=neg), rtol=0, atol=0)
    assert not torch.allclose(out, _edit(tiny_pipe, images))
    # one instruction per image: the first image's branches coincide, the second's do not
    with _TransformerConditions(tiny_pipe.transformer) as seen:
        _edit(tiny_pipe, images, negative_prompt=[KEEP, "Make it blue."])
    torch.testing.assert_close(seen[0][0], cond[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[0][1], neg[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one per image"):
        _edit(tiny_pipe, images, negative_prompt=["a", "b", "c"])


@torch.no_grad()
def test_negative_image_false_is_the_text_only_branch(tiny_pipe):
    images = _scenes()
    text_only = tiny_pipe.encode_prompt([None])
    for kw in ({}, {"output_type": "np", "num_images_per_prompt": 2}):
        expected = _edit(tiny_pipe, images, negative_prompt_embeds=text_only.expand(2, -1, -1), **kw)
        got = _edit(tiny_pipe, images, negative_image=False, **kw)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        # a single negative row serves every image
        np.testing.assert_array_equal(np.asarray(_edit(tiny_pipe, images, negative_prompt_embeds=text_only, **kw)),
                                      np.asarray(expected))
    # a negative caption with the image dropped: the text-only caption branch
    with _TransformerConditions(tiny_pipe.transformer) as seen:
        _edit(tiny_pipe, images, negative_image=False, negative_prompt="blurry")
    torch.testing.assert_close(seen[0][:2], tiny_pipe.encode_prompt(["blurry", "blurry"]), rtol=0, atol=0)


def test_num_images_per_prompt_and_sizes(tiny_pipe):
    out = _generate(tiny_pipe, num_images_per_prompt=2, height=32, width=16)
    assert out.shape == (4, 32, 16, 3)
    with pytest.raises(ValueError, match="multiple of 2"):
        _generate(tiny_pipe, height=15, width=16)


def test_pixel_space_model():
    pipe = build_tiny(pixel_space=True)
    assert pipe.vae is None and pipe.vae_scale_factor == 1
    out = _generate(pipe)
    assert out.shape == (2, 8, 8, 3)


def test_lim_width_mismatch_is_an_error(tiny_pipe):
    bad = ParaUniConditioner(llm_hidden_size=32, llm_num_layers=4, num_queries=4, connector_depth=1,
                             connector_heads=4, connector_ffn=16, caption_channels=48)
    with pytest.raises(ValueError, match="caption_channels=32"):
        ParaUniPipeline(**{**tiny_pipe.components, "conditioner": bad})
    wrong_vlm = ParaUniConditioner(llm_hidden_size=16, llm_num_layers=4, connector_depth=1, connector_heads=4,
                                   connector_ffn=16, caption_channels=32)
    with pytest.raises(ValueError, match="width 16"):
        ParaUniPipeline(**{**tiny_pipe.components, "conditioner": wrong_vlm})


def test_gradients_reach_queries_and_lim_only():
    pipe = build_tiny(seed=1)
    vlm, cond, transformer = pipe.vlm, pipe.conditioner, pipe.transformer
    vlm.requires_grad_(False)
    transformer.requires_grad_(False)
    cond.train()
    vlm_before = {k: v.clone() for k, v in vlm.state_dict().items()}
    cond_before = {k: v.clone() for k, v in cond.state_dict().items()}
    opt = torch.optim.AdamW(cond.parameters(), lr=1e-2)
    x_0 = torch.randn(2, 4, 8, 8)
    noise = torch.randn_like(x_0)
    sigma = sample_sigmas(2, torch.Generator().manual_seed(0))
    c = pipe.encode_prompt(PROMPTS)
    v = transformer(interpolate(x_0, noise, sigma), encoder_hidden_states=c, timestep=sigma_to_timestep(sigma),
                    return_dict=False)[0]
    flow_loss(v, x_0, noise).backward()
    assert cond.queries.grad is not None and cond.queries.grad.abs().sum() > 0
    assert all(p.grad is not None for p in cond.lim.parameters())
    assert all(p.grad is None for p in vlm.parameters())
    opt.step()
    assert all(torch.equal(v, vlm.state_dict()[k]) for k, v in vlm_before.items())
    changed = [k for k, v in cond.state_dict().items() if not torch.equal(v, cond_before[k])]
    assert "queries" in changed and any(k.startswith("lim.connector") for k in changed)


def _drop(folder, component: str, keep) -> list[str]:
    """Rewrite ``folder/component``'s safetensors without the tensors ``keep`` rejects; returns the dropped."""
    from safetensors.torch import load_file, save_file

    dropped = []
    for file in (folder / component).glob("*.safetensors"):
        w = load_file(str(file))
        dropped += [k for k in w if not keep(k)]
        save_file({k: v for k, v in w.items() if keep(k)}, str(file))
    return dropped


@pytest.mark.parametrize("component, drop", [("conditioner", "lim.norm."), ("transformer", "proj_out."),
                                             ("vlm", "layernorm")])
def test_a_pipeline_folder_missing_weights_does_not_load(tiny_pipe, tmp_path, component, drop):
    """diffusers and transformers only warn about missing weights and initialise them at random; a pipeline
    folder without the LIM's norm (the reference code's bug), a transformer or a VLM tensor must fail."""
    from parauni.pipelines.weights import WeightsMismatchError

    tiny_pipe.save_pretrained(tmp_path)
    dropped = _drop(tmp_path, component, lambda k: drop not in k)
    assert dropped
    with pytest.raises(WeightsMismatchError, match=component) as err:
        ParaUniPipeline.from_pretrained(tmp_path)
    if component != "vlm":  # the VLM's keys are renamed on save: its check names shapes
        assert dropped[0] in str(err.value)


def test_trainable_weights_load_strictly(tiny_pipe, tmp_path):
    """``load_trainable``: a checkpoint without the LIM norm, with a foreign tensor, or of another shape fails
    naming them; a complete one loads."""
    from safetensors.torch import save_file

    from parauni.pipelines.weights import WeightsMismatchError, load_trainable

    state = {f"conditioner.{k}": v.clone() for k, v in tiny_pipe.conditioner.state_dict().items()}
    save_file(state, str(tmp_path / "trainable.safetensors"))
    assert load_trainable(tiny_pipe, tmp_path) == sorted(state)
    no_norm = {k: v for k, v in state.items() if not k.startswith("conditioner.lim.norm.")}
    save_file(no_norm, str(tmp_path / "trainable.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"missing \(2\): conditioner\.lim\.norm\.bias, conditioner\.lim"):
        load_trainable(tiny_pipe, tmp_path)
    save_file({**state, "conditioner.extra": torch.zeros(1)}, str(tmp_path / "trainable.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"unexpected \(1\): conditioner\.extra"):
        load_trainable(tiny_pipe, tmp_path)
    bad = dict(state, **{"conditioner.queries": torch.zeros(3, 3)})
    save_file(bad, str(tmp_path / "trainable.safetensors"))
    with pytest.raises(WeightsMismatchError, match="shape mismatch: conditioner.queries"):
        load_trainable(tiny_pipe, tmp_path)


def test_a_conditioner_folder_missing_the_lim_norm_does_not_load(tiny_pipe, tmp_path):
    from parauni.errors import WeightsMismatchError

    tiny_pipe.conditioner.save_pretrained(tmp_path)
    assert _drop(tmp_path.parent, tmp_path.name, lambda k: not k.startswith("lim.norm.")) == ["lim.norm.bias",
                                                                                              "lim.norm.weight"]
    with pytest.raises(WeightsMismatchError, match="missing keys: lim.norm.bias, lim.norm.weight"):
        ParaUniConditioner.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt must be non-empty"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
    (dict(height=0), "height must be a positive multiple"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1"),
    (dict(output_type="jpeg"), "output_type must be one of"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "not in \\['latents'\\]"),
])
def test_bad_inputs_raise_before_any_work(tiny_pipe, kwargs, message):
    args = dict(prompt="a red circle", num_inference_steps=2)
    with pytest.raises(ValueError, match=message):
        tiny_pipe(**{**args, **kwargs})


def test_step_callback_sees_and_can_replace_the_latents(tiny_pipe):
    seen = []

    def hook(pipe, step, timestep, kwargs):
        seen.append((step, float(timestep), kwargs["latents"].shape))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 2 else {}

    out = tiny_pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="latent", callback_on_step_end=hook).images
    assert [s for s, _, _ in seen] == [0, 1, 2] and seen[0][1] > seen[2][1]
    assert torch.count_nonzero(out) == 0  # the last step's replacement is the output


@pytest.mark.parametrize("name", ["tiny", "toy-all-layers"])
def test_every_pipeline_saves_and_loads_to_the_same_images(name, tmp_path):
    """The contract every pipeline keeps: save -> load gives identical output (same weights, config, scheduler,
    tokenizer)."""
    from parauni.pipelines.loading import load_pipeline

    pipe = load_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, output_type="np")
    before = pipe("a red circle above a blue square", generator=torch.Generator().manual_seed(1), **kw).images
    pipe.save_pretrained(tmp_path)
    again = load_pipeline(str(tmp_path))
    again.set_progress_bar_config(disable=True)
    after = again("a red circle above a blue square", generator=torch.Generator().manual_seed(1), **kw).images
    np.testing.assert_array_equal(before, after)


def test_a_saved_toy_pipeline_loads_in_a_fresh_interpreter(tmp_path):
    """``ParaUniPipeline.from_pretrained`` of a saved toy model in a process that imported nothing else: the toy
    tokenizer's module (named in model_index.json, inside this package) is imported for diffusers, which would
    otherwise refuse the folder."""
    import subprocess
    import sys

    from parauni.pipelines.loading import load_pipeline

    load_pipeline("toy-all-layers").save_pretrained(tmp_path / "m")
    code = ("import sys; from parauni import ParaUniPipeline; "
            "p = ParaUniPipeline.from_pretrained(sys.argv[1]); print(type(p.tokenizer).__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ToyTokenizer"), proc.stderr[-2000:]
