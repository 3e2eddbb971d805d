"""Survey cases, part two: configs of train / rl, damaged state files, kills, concurrent commands, disks, env."""

from __future__ import annotations

import signal

from survey_cases import (
    AWM,
    GE,
    NFT,
    RL,
    TE,
    TR,
    Case,
    Step,
    both,
    count,
    exists,
    last_step,
    mount_tmpfs,
    not_exists,
    ok,
    refuse,
    remove,
    said,
    seq,
    symlink,
    truncate,
    umount,
    write,
)

SIGINT, SIGTERM, SIGKILL = signal.SIGINT, signal.SIGTERM, signal.SIGKILL
OUT = "train.output_dir={d}/out"


def _overrides(text: str) -> list[str]:
    """Space-separated overrides; one whose value is a mapping (``{a: 1}``) is a single argument."""
    return [text] if "{" in text else text.split()


def configs() -> list[Case]:
    c: list[Case] = []
    tr_bad = {"steps0": "train.steps=0", "steps_neg": "train.steps=-5", "steps_abc": "train.steps=abc",
              "lr_nan": "optim.lr=nan", "lr_neg": "optim.lr=-1", "batch0": "train.batch_size=0",
              "save_every0": "train.save_every=0", "keep_last_neg": "train.keep_last=-1",
              "resolution33": "data.resolution=33", "source_bogus": "model.source=bogus",
              "unknown_key": "train.stepz=3", "unknown_section": "nope.x=1", "no_equals": "train.steps",
              "betas_one": "optim.betas=[0.9]", "betas_str": "optim.betas=abc", "fusion_bogus":
                  "model.conditioner.fusion=bogus", "uncond_2": "data.uncond_prob=2", "output_empty":
                  "train.output_dir=", "seed_neg": "train.seed=-1", "logger_bogus": "train.logger=wandbx",
              "data_kind_bogus": "data.kind=nope", "stage_bogus": "train.stage=IV", "dup_key_override":
                  "train.steps=2 train.steps=abc", "yaml_injection": "train.steps={a: 1}",
              "lora_rank_stage1": "model.lora_rank=4"}
    for k, ov in tr_bad.items():
        c.append(refuse(f"train_{k}", TR + [OUT] + _overrides(ov), check=not_exists("out/checkpoint-*")))
    files = {"missing": None, "is_dir": "DIR", "list_top": "- a\n- b\n", "syntax": "train: {steps: 2\n",
             "tabs": "train:\n\tsteps: 2\n", "binary": b"\x00\xff\xfe garbage", "scalar": "42\n",
             "base_missing": "base: nope.yaml\n", "base_cycle": "base: b.yaml\n",
             "merge_no_base": "merge: [rewards.weights]\n", "merge_string": "base: toy_stage1.yaml\nmerge: yes\n",
             "merge_nonmapping": "base: toy_stage1.yaml\nmerge: [train.steps]\n",
             "merge_unknown": "base: toy_stage1.yaml\nmerge: [train.nope]\n",
             "base_is_dir": "base: sub\n", "base_list": "base: [toy_stage1.yaml]\n", "dup_keys":
                 "train:\n  steps: 2\ntrain:\n  steps: 3\n", "anchor_bomb": "a: &a [1,1,1,1]\nb: &b [*a,*a,*a]\n"
                                                                     "c: [*b,*b,*b]\n"}
    for k, text in files.items():
        def setup(d, text=text):
            (d / "sub").mkdir(exist_ok=True)
            if text == "DIR":
                (d / "c.yaml").mkdir()
            elif text is not None:
                (d / "c.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
            (d / "b.yaml").write_text("base: c.yaml\n")
        c.append(refuse(f"train_config_{k}", ["train", "{d}/c.yaml", OUT, "train.steps=2"], setup=setup))
    c.append(ok("train_config_in_unicode_dir", ["train", "{d}/cfg é/c 1.yaml", OUT, "train.steps=2",
                                                 "train.save_every=1", "train.batch_size=4",
                                                 "train.eval_geneval=false", "--no-progress"],
                setup=write("cfg é/c 1.yaml", "base: toy_stage1.yaml\n"), check=last_step("out/metrics.jsonl", 2)))
    c.append(ok("train_steps_3_honoured", TR + [OUT, "train.steps=3"], check=last_step("out/metrics.jsonl", 3)))
    c.append(ok("train_output_symlink_dir", TR + ["train.output_dir={d}/ln"],
                setup=seq(write("real/.k", ""), symlink("ln", "{d}/real")), check=exists("real/checkpoint-*")))
    c.append(refuse("train_output_is_file", TR + ["train.output_dir={d}/f"], setup=write("f", "my file")))
    c.append(refuse("train_output_dangling_symlink", TR + ["train.output_dir={d}/ln"],
                    setup=symlink("ln", "{d}/missing/deeper")))
    c.append(refuse("train_output_too_long", TR + ["train.output_dir={d}/" + "y" * 300]))
    c.append(refuse("train_output_in_proc", TR + ["train.output_dir=/proc/parauni_run"]))
    c.append(refuse("train_resume_missing_folder", TR + [OUT, "--resume", "{d}/nope"]))
    c.append(refuse("train_resume_empty_folder", TR + [OUT, "--resume"], setup=write("out/.k", "")))
    c.append(refuse("train_resume_file", TR + [OUT, "--resume", "{d}/f"], setup=write("f", "x")))
    c.append(refuse("train_resume_rl_checkpoint", TR + ["train.output_dir={d}/rlrun", "--resume"],
                    fixtures=("rlrun",)))
    c.append(refuse("train_into_rl_run", TR + ["train.output_dir={d}/rlrun"], fixtures=("rlrun",)))
    c.append(refuse("rl_into_train_run", RL + ["train.output_dir={d}/run"], fixtures=("run",)))
    c.append(refuse("train_into_export_folder", TR + ["train.output_dir={d}/exp"], fixtures=("exp",)))
    c.append(refuse("train_into_folder_with_user_files", TR + [OUT], setup=write("out/thesis.tex", "mine"),
                    check=exists("out/thesis.tex")))
    c.append(Case("train_overwrite_twice", [Step(TR + ["train.output_dir={d}/run", "--overwrite"], "ok"),
                                            Step(TR + ["train.output_dir={d}/run", "--overwrite"], "ok")],
                  fixtures=("run",), check=count("run.previous-*", 2)))
    c.append(refuse("train_allow_change_with_overwrite", TR + ["train.output_dir={d}/run", "--overwrite",
                                                               "--resume"], fixtures=("run",)))
    c.append(refuse("train_resume_changed_lr", TR[:2] + ["train.steps=6", "train.save_every=2", "train.batch_size=4",
                                                         "train.eval_geneval=false", "train.output_dir={d}/run",
                                                         "optim.lr=5e-2", "--resume"], fixtures=("run",)))
    c.append(ok("train_resume_longer", TR[:2] + ["train.steps=6", "train.save_every=2", "train.batch_size=4",
                                                 "train.eval_geneval=false", "train.output_dir={d}/run",
                                                 "train.keep_last=2", "--resume", "--no-progress"],
                fixtures=("run",), may_change=("run/*.jsonl", "run/*.yaml", "run/trainable.safetensors",
                                               "run/checkpoint-*/*", "run/logs/*/*"),
                check=last_step("run/metrics.jsonl", 6)))
    c.append(ok("train_resume_fewer_steps_says_so", TR[:2] + ["train.steps=2", "train.save_every=2",
                                                              "train.batch_size=4", "train.eval_geneval=false",
                                                              "train.output_dir={d}/run", "train.keep_last=2",
                                                              "--resume", "--no-progress"],
                fixtures=("run",), may_change=("run/*.jsonl", "run/logs/*/*"), check=said("nothing is left to train")))
    c.append(ok("rl_resume_fewer_epochs_says_so", RL[:-2] + ["train.epochs=1", "train.save_every=1",
                                                             "train.output_dir={d}/rlrun", "--resume", "--no-progress"],
                fixtures=("rlrun",), may_change=("rlrun/*.jsonl", "rlrun/logs/*/*", "rlrun/final/*", "rlrun/final/*/*",
                                                 "rlrun/curves/*"),
                check=said("nothing is left to train")))
    c.append(ok("train_resume_finished_same", TR[:2] + ["train.steps=4", "train.save_every=2", "train.batch_size=4",
                                                        "train.eval_geneval=false", "train.output_dir={d}/run",
                                                        "train.keep_last=2", "--resume", "--no-progress"],
                fixtures=("run",), may_change=("run/*.jsonl", "run/logs/*/*")))

    rl_bad = {"algo_bogus": "algorithm=bogus", "algo_module_missing": "algorithm=no_pkg.mod:Algo",
              "algo_not_class": "algorithm=os:getcwd", "awm_key_under_grpo": "awm.solver=dpm2",
              "nft_solver_under_grpo": "nft.solver=dpm2", "weights_empty": "rewards.weights={}",
              "weights_bogus": "rewards.weights={bogus: 1.0}", "weights_zero": "rewards.weights={toy_quality: 0.0}",
              "weight_nan": "rewards.weights={toy_quality: .nan}", "group1": "sampling.group_size=1",
              "steps1": "sampling.steps=1", "per_epoch0": "prompts.per_epoch=0", "epochs0": "train.epochs=0",
              "noise0": "sampling.noise_level=0", "window_big": "sampling.sde_window=9",
              "finetune_bogus": "model.finetune=half", "lora_target_empty": "model.lora_targets=[]",
              "clip_neg": "optim.clip_range=-1", "ema_decay1": "optim.ema_decay=1.0",
              "prompts_kind_file_nopath": "prompts.kind=file", "prompts_path_missing":
                  "prompts.kind=file prompts.path={d}/nope.txt", "prompts_path_empty":
                  "prompts.kind=file prompts.path={d}/empty.txt", "options_unknown":
                  "rewards.options={nope: {a: 1}}", "init_missing": "model.init={d}/nope.safetensors",
              "init_text": "model.init={d}/t.safetensors", "source_missing_folder": "model.source={d}/nope",
              "timestep_frac0": "optim.timestep_fraction=0", "ldam_window0": "ldam.window=0"}
    for k, ov in rl_bad.items():
        c.append(refuse(f"rl_{k}", RL + [OUT] + _overrides(ov), setup=seq(write("empty.txt", ""),
                                                                       write("t.safetensors", "not weights")),
                        check=not_exists("out/checkpoint-*")))
    other = {"awm_with_nft_beta": (AWM, "nft.beta=2.0"), "awm_with_noise": (AWM, "sampling.noise_level=0.5"),
             "awm_with_sde_window": (AWM, "sampling.sde_window=1"), "nft_with_awm_solver": (NFT, "awm.solver=dpm2"),
             "nft_with_kl_form": (NFT, "optim.kl_form=transition"), "grpo_with_awm_weighting":
                 (RL, "awm.weighting=uniform"), "grpo_with_nft_decay": (RL, "nft.decay_type=1"),
             "nft_with_sde_window_range": (NFT, "sampling.sde_window_range=[0,2]"),
             "awm_with_nft_section_file": (["rl", "{d}/c.yaml"] + AWM[2:], None)}
    for k, (base, ov) in other.items():
        argv = base + [OUT] + ([] if ov is None else [ov])
        c.append(refuse(f"rl_{k}", argv, setup=write("c.yaml", "base: toy_awm_geneval.yaml\nnft: {beta: 1.0}\n"),
                        check=not_exists("out/checkpoint-*")))
    c.append(refuse("rl_merge_weights_then_cli", ["rl", "{d}/c.yaml", OUT] + RL[2:] + ["merge.x=1"],
                    setup=write("c.yaml", "base: toy_grpo.yaml\nmerge: [rewards.weights]\n"
                                          "rewards: {weights: {toy_geneval: 2.0}}\n")))
    c.append(ok("rl_merge_weights_ok", ["rl", "{d}/c.yaml", OUT] + RL[2:] + ["train.epochs=1", "ldam.enabled=false"],
                setup=write("c.yaml", "base: toy_grpo.yaml\nmerge: [rewards.weights]\n"
                                      "rewards: {weights: {redness: 1.0}}\n"), check=_has_reward("redness", 4)))
    c.append(ok("rl_child_replaces_weights", ["rl", "{d}/c.yaml", OUT] + RL[2:],
                setup=write("c.yaml", "base: toy_grpo.yaml\nrewards: {weights: {toy_quality: 1.0}}\n"),
                check=_has_reward("toy_quality", 1)))
    c.append(ok("rl_nft_runs", NFT + [OUT], check=exists("out/final/model_index.json")))
    c.append(ok("rl_awm_runs", AWM + [OUT], check=exists("out/final/model_index.json")))
    c.append(Case("rl_overwrite_twice", [Step(RL + ["train.output_dir={d}/rlrun", "--overwrite"], "ok"),
                                         Step(RL + ["train.output_dir={d}/rlrun", "--overwrite"], "ok")],
                  fixtures=("rlrun",), check=count("rlrun.previous-*", 2)))
    c.append(refuse("rl_resume_other_algorithm", RL[:-2] + ["train.epochs=3", "train.save_every=1",
                                                            "algorithm=diffusion_nft", "train.output_dir={d}/rlrun",
                                                            "--resume"], fixtures=("rlrun",)))
    c.append(refuse("grpo_alias_bad_key", ["grpo", "configs/toy_grpo.yaml", OUT, "sampling.nope=1"]))
    return c


def _has_reward(name: str, n: int):
    def go(d):
        import yaml
        cfg = yaml.safe_load((d / "out/config.yaml").read_text())
        w = cfg["rewards"]["weights"]
        return None if name in w and len(w) == n else f"rewards trained: {sorted(w)}"
    return go


def damaged() -> list[Case]:
    c: list[Case] = []
    ck, prev = "run/checkpoint-0000004", "run/checkpoint-0000002"
    res = TR[:2] + ["train.steps=6", "train.save_every=2", "train.batch_size=4", "train.eval_geneval=false",
                    "train.keep_last=2", "train.output_dir={d}/run", "--resume", "--no-progress"]
    mc = ("run/*.jsonl", "run/*.yaml", "run/trainable.safetensors", "run/checkpoint-*/*", "run/logs/*/*")
    dmg = {"state_list": write(f"{ck}/trainer_state.json", "[]"), "state_null": write(f"{ck}/trainer_state.json",
                                                                                      "null"),
           "state_neg": write(f"{ck}/trainer_state.json", '{"step": -3}'),
           "state_missing": remove(f"{ck}/trainer_state.json"), "config_garbage": write(f"{ck}/config.yaml", "{{{"),
           "trainable_zero": write(f"{ck}/trainable.safetensors", b""),
           "trainable_header": write(f"{ck}/trainable.safetensors", b"\xff" * 64),
           "rng_garbage": write(f"{ck}/random_states_0.pkl", b"garbage"),
           "all_ckpts_zero": seq(write(f"{ck}/trainable.safetensors", b""), write(f"{prev}/trainable.safetensors",
                                                                                  b"")),
           "run_config_garbage": write("run/config.yaml", "\x00\x01"),
           "metrics_binary": write("run/metrics.jsonl", b"\x00\xff\xfe"),
           "metrics_truncated_row": truncate("run/metrics.jsonl", 0.9),
           "ckpt_is_file": seq(remove(ck), write(ck, "x")),
           "custom_ckpt_garbage": write(f"{ck}/custom_checkpoint_0.pkl", b"garbage")}
    for k, fn in dmg.items():
        c.append(Case(f"train_resume_{k}", [Step(res, "either")], fixtures=("run",), setup=fn, may_change=mc))
    for k, fn in {"trainable_zero": dmg["trainable_zero"], "config_missing": remove(f"{ck}/config.yaml"),
                  "header": dmg["trainable_header"], "run_trainable_text": write("run/trainable.safetensors", "x"),
                  "ckpt_config_list": write(f"{ck}/config.yaml", "- 1\n")}.items():
        c.append(Case(f"export_damaged_{k}", [Step(["export", "{d}/" + ck if "run_" not in k else "{d}/run",
                                                    "--out", "{d}/o"], "either")], fixtures=("run",), setup=fn))
    rep = {"metrics_binary": write("run/metrics.jsonl", b"\x00\xff"), "config_garbage":
               write("run/config.yaml", ": : :"), "summary_garbage": write("te/summary.json", "{"),
           "summary_list": write("te/summary.json", "[]"), "results_garbage": write("te/results.jsonl", "{{\n"),
           "provenance_garbage": write("te/provenance.json", "\x00"), "sample_truncated":
               truncate("te/00000/samples/0000.png", 0.3), "metadata_missing": remove("te/00001/metadata.jsonl"),
           "metrics_huge_line": write("run/metrics.jsonl", '{"step": 1, "loss": ' + "1" * 5000 + "}\n")}
    for k, fn in rep.items():
        c.append(Case(f"report_damaged_{k}", [Step(["report", "{d}/run", "{d}/te", "--out", "{d}/r.html"],
                                                   "either")], fixtures=("run", "te"), setup=fn))
    te = {"provenance_garbage": write("te/provenance.json", "{"), "provenance_list": write("te/provenance.json", "[]"),
          "provenance_empty": write("te/provenance.json", "{}"),
          "sample_truncated": truncate("te/00000/samples/0000.png", 0.3),
          "sample_text": write("te/00000/samples/0000.png", "text"),
          "metadata_garbage": write("te/00000/metadata.jsonl", "{"),
          "results_garbage": write("te/results.jsonl", "\x00")}
    for k, fn in te.items():
        c.append(Case(f"toy_eval_resume_{k}", [Step(TE + ["--out", "{d}/te"], "either")],
                      # the evaluation's own layout files (a damaged metadata.jsonl is written again)
                      fixtures=("te",), setup=fn, may_change=("te/*.json*", "te/*/samples/*", "te/*/metadata.jsonl")))
    rl = {"grpo_state_list": write("rlrun/checkpoint-000002/grpo_state.json", "[]"),
          "grpo_state_missing": remove("rlrun/checkpoint-000002/grpo_state.json"),
          "ema_zero": write("rlrun/checkpoint-000002/ema.safetensors", b""),
          "ldam_garbage": write("rlrun/checkpoint-000002/ldam.pt", b"garbage"),
          "ldam_jsonl_garbage": write("rlrun/ldam.jsonl", "{\n")}
    for k, fn in rl.items():
        c.append(Case(f"rl_resume_{k}", [Step(RL[:-2] + ["train.epochs=3", "train.save_every=1",
                                                         "train.output_dir={d}/rlrun", "--resume", "--no-progress"],
                                              "either")], fixtures=("rlrun",), setup=fn,
                      may_change=("rlrun/*.jsonl", "rlrun/*.yaml", "rlrun/checkpoint-*/*", "rlrun/final/*",
                                  "rlrun/final/*/*", "rlrun/curves/*", "rlrun/logs/*/*")))
    ex = {"model_index_garbage": write("exp/model_index.json", "{"),
          "transformer_weights_zero": seq(*[write(f"exp/transformer/{n}", b"") for n in
                                            ("diffusion_pytorch_model.safetensors",)]),
          "conditioner_missing": remove("exp/conditioner"), "scheduler_config_list":
              write("exp/scheduler/scheduler_config.json", "[]")}
    for k, fn in ex.items():
        c.append(refuse(f"generate_damaged_export_{k}", ["generate", "--model", "{d}/exp", "--prompt", "a",
                                                         "--steps", "2", "--out", "{d}/o"],
                        fixtures=("exp",), setup=fn))
    c.append(ok("generate_from_export", ["generate", "--model", "{d}/exp", "--prompt", "a", "--steps", "2",
                                         "--out", "{d}/o", "--no-progress"], fixtures=("exp",),
                check=count("o/[0-9]*.png", 1)))
    c.append(refuse("train_accelerate_config_garbage", ["train", "configs/toy_stage1.yaml", OUT, "train.steps=2"],
                    setup=write("acc.yaml", "{{"), ))
    c[-1].steps[0].env = {"ACCELERATE_CONFIG_FILE": "/nonexistent/acc.yaml"}
    c[-1].steps[0].expect = "either"
    return c


def faults() -> list[Case]:
    c: list[Case] = []
    tr = TR[:2] + ["train.steps=400", "train.save_every=2", "train.batch_size=4", "train.eval_geneval=false",
                   "train.keep_last=2", "--no-progress"]
    res = TR[:2] + ["train.steps=6", "train.save_every=2", "train.batch_size=4", "train.eval_geneval=false",
                    "train.keep_last=2", "--no-progress", OUT, "--resume"]
    c.append(Case("train_sigterm_during_import", [Step(tr + [OUT], "stop", kill=(SIGTERM, 1.5))],
                  check=not_exists("out/checkpoint-*.tmp*")))
    c.append(Case("train_sigkill_during_import_then_resume_auto",
                  [Step(tr + [OUT], "stop", kill=(SIGKILL, 2.0)),
                   Step(res[:-1] + ["--resume", "auto", "train.steps=2"], "ok")],
                  check=last_step("out/metrics.jsonl", 2)))
    c.append(Case("train_sigkill_after_ckpt_then_resume",
                  [Step(tr + [OUT], "stop", kill=(SIGKILL, "out/checkpoint-0000004")), Step(res, "ok")],
                  check=last_step("out/metrics.jsonl", 6)))
    c.append(Case("train_sigint_after_ckpt_then_resume",
                  [Step(tr + [OUT], "stop", kill=(SIGINT, "out/checkpoint-0000002")), Step(res, "ok")],
                  check=both(last_step("out/metrics.jsonl", 6), not_exists("out/*.tmp*"))))
    c.append(Case("train_sigterm_mid_then_no_resume_refused",
                  [Step(tr + [OUT], "stop", kill=(SIGTERM, "out/checkpoint-0000002")), Step(res[:-1])],
                  check=exists("out/checkpoint-*")))
    c.append(Case("train_sigkill_during_overwrite", [Step(tr + ["train.output_dir={d}/run", "--overwrite"], "stop",
                                                          kill=(SIGKILL, "run.previous-*"))], fixtures=("run",)))
    rl = RL[:-2] + ["train.epochs=20", "train.save_every=1", "--no-progress", OUT]
    c.append(Case("rl_sigterm_after_ckpt_then_resume",
                  [Step(rl, "stop", kill=(SIGTERM, "out/checkpoint-000001")),
                   Step(RL[:-2] + ["train.epochs=2", "train.save_every=1", OUT, "--resume", "--no-progress"], "ok")],
                  check=exists("out/final/model_index.json")))
    c.append(Case("rl_sigkill_during_final_write", [Step(RL + [OUT], "stop", kill=(SIGKILL, "out/final*"))],
                  check=not_exists("out/final/model_index.json.tmp*")))
    c.append(Case("export_sigkill_over_existing", [Step(["export", "{d}/run", "--out", "{d}/exp", "--overwrite"],
                                                        "stop", kill=(SIGKILL, "exp.tmp-*"))],
                  fixtures=("run", "exp"), check=exists("exp/model_index.json")))
    c.append(Case("export_sigterm_then_again", [Step(["export", "{d}/run", "--out", "{d}/o"], "stop",
                                                     kill=(SIGTERM, "o.tmp-*")),
                                                Step(["export", "{d}/run", "--out", "{d}/o"], "ok")],
                  fixtures=("run",), check=exists("o/model_index.json")))
    c.append(Case("toy_eval_sigkill_then_resume", [Step(TE[:-2] + ["--images-per-prompt", "2", "--out", "{d}/o"],
                                                        "stop", kill=(SIGKILL, "o/00001/samples/0000.png")),
                                                   Step(TE[:-2] + ["--images-per-prompt", "2", "--out", "{d}/o"],
                                                        "ok")], check=count("o/*/samples/*.png", 12)))
    c.append(Case("geneval_sigint_then_resume", [Step(GE + ["--out", "{d}/o"], "stop",
                                                      kill=(SIGINT, "o/00002/samples/0000.png")),
                                                 Step(GE + ["--out", "{d}/o", "--resume"], "ok")],
                  check=count("o/*/samples/*.png", 6)))
    c.append(Case("generate_sigterm_midway", [Step(["generate", "--model", "tiny", "--prompt", "a", "--prompt", "b",
                                                    "--steps", "2", "--out", "{d}/o", "--images-per-prompt", "3"],
                                                   "stop", kill=(SIGTERM, "o/*.png"))],
                  setup=write("o/mine.txt", "mine"), check=exists("o/mine.txt")))
    c.append(Case("report_sigkill_over_existing", [Step(["report", "{d}/run", "--out", "{d}/r.html"], "stop",
                                                        kill=(SIGKILL, 3.5))], fixtures=("run",),
                  setup=write("r.html", "<p>old report</p>"), check=exists("r.html")))
    c.append(Case("detector_sigint", [Step(["toy", "detector-accuracy", "--n", "100000", "--out", "{d}/a.json"],
                                           "stop", kill=(SIGINT, 7.0))], setup=write("a.json", '{"mine": 1}'),
                  check=exists("a.json")))
    # concurrent commands on one folder
    c.append(Case("two_trains_same_folder", [Step(tr + [OUT], "bg", background=True, then_after="out/config.yaml"),
                                             Step(TR + [OUT])], check=exists("out/checkpoint-*")))
    c.append(Case("train_resume_while_training", [Step(tr + [OUT], "bg", background=True,
                                                       then_after="out/checkpoint-0000002"),
                                                  Step(res)]))
    c.append(Case("export_while_training", [Step(tr + [OUT], "bg", background=True,
                                                 then_after="out/checkpoint-0000002"),
                                            Step(["export", "{d}/out", "--out", "{d}/e"], "either")]))
    c.append(Case("report_while_toy_eval", [Step(TE[:-2] + ["--images-per-prompt", "2", "--out", "{d}/te",
                                                            "--overwrite"], "bg", background=True,
                                                 then_after="te/00000/samples/0000.png"),
                                            Step(["report", "{d}/te", "--out", "{d}/r.html"], "either")],
                  fixtures=("te",), may_change=("te/*", "te/*/*", "te/*/*/*")))
    c.append(Case("two_toy_evals_same_out", [Step(TE[:4] + ["--limit", "4", "--steps", "20", "--images-per-prompt",
                                                            "4", "--out", "{d}/o"], "bg", background=True,
                                                  then_after="o/provenance.json"),
                                             Step(TE[:-4] + ["--steps", "3", "--images-per-prompt", "1", "--out",
                                                             "{d}/o", "--overwrite"])]))
    c.append(Case("geneval_and_toy_eval_same_out", [Step(GE[:4] + ["--limit", "4", "--steps", "20",
                                                                    "--images-per-prompt", "4", "--out", "{d}/o"],
                                                         "bg", background=True,
                                                         then_after="o/00000"),
                                                    Step(TE + ["--out", "{d}/o"], "either")]))
    c.append(Case("two_exports_same_out", [Step(["export", "{d}/run", "--out", "{d}/o"], "bg", background=True,
                                                then_after=2.0),
                                           Step(["export", "{d}/run", "--out", "{d}/o"], "either")],
                  fixtures=("run",), check=exists("o/model_index.json")))
    c.append(Case("rl_while_train_same_folder", [Step(tr + [OUT], "bg", background=True, then_after="out/config.yaml"),
                                                 Step(RL + [OUT])]))
    # read-only and full disks
    ro = mount_tmpfs("m", "4m", ro=True)
    full = mount_tmpfs("m", "200k", fill=True)
    um = umount("m")
    for k, argv in {"toy_eval": TE + ["--out", "{d}/m/o"], "detector": ["toy", "detector-accuracy", "--n", "4",
                                                                        "--out", "{d}/m/a.json"],
                    "dpg": ["eval", "dpg", "--model", "tiny", "--steps", "2", "--limit", "1", "--out", "{d}/m/o"],
                    "cache_latents": ["cache-latents", "configs/toy_stage1.yaml", "--limit", "2", "--out", "{d}/m/o"],
                    "analyze": ["analyze", "layers", "--model", "toy-all-layers", "--prompts", "{d}/p.txt",
                                "--steps", "2", "--out", "{d}/m/o"],
                    "demo": ["demo", "--out", "{d}/m/o", "--limit", "1", "--steps", "2"],
                    "rl_nft": NFT + ["train.output_dir={d}/m/o"],
                    "generate": ["generate", "--model", "tiny", "--prompt", "a", "--steps", "2", "--out", "{d}/m/o"],
                    "export": ["export", "{d}/run", "--out", "{d}/m/o"],
                    "report": ["report", "{d}/run", "--out", "{d}/m/r.html"],
                    "train": TR + ["train.output_dir={d}/m/o"],
                    "toy_train_rewards": ["toy", "train-rewards", "--steps", "1", "--pool", "8", "--batch-size", "4",
                                          "--out", "{d}/m/o"]}.items():
        fx = ("run",) if k in ("export", "report") else ()
        setup = write("p.txt", "a red circle\n")
        if k in ("toy_eval", "detector", "dpg", "cache_latents", "analyze", "demo", "toy_train_rewards"):
            c.append(refuse(f"readonly_{k}", argv, fixtures=fx, setup=seq(setup, ro), teardown=um))
        if k in ("toy_eval", "detector", "export", "report", "generate", "analyze", "rl_nft", "demo"):
            c.append(refuse(f"diskfull_{k}", argv, fixtures=fx, setup=seq(setup, full), teardown=um,
                            check=not_exists("m/*.tmp*", "m/o.tmp*")))
    # environment variables and odd working folders
    # a broken plugin does not stop the core (parauni.registry): one warning naming it, then the command runs
    c.append(Case("plugins_broken_target", [Step(TR + [OUT], "either")], check=said("failed to register")))
    c[-1].steps[0].env = {"PARAUNI_PLUGINS": "no_such_pkg.mod:register"}
    c.append(Case("plugins_target_not_callable", [Step(TR + [OUT], "either")], check=said("failed to register")))
    c[-1].steps[0].env = {"PARAUNI_PLUGINS": "os:sep"}
    c.append(Case("plugins_target_raises", [Step(["generate", "--model", "tiny", "--prompt", "a", "--out", "{d}/o"],
                                                 "either")], check=said("failed to register")))
    c[-1].steps[0].env = {"PARAUNI_PLUGINS": "json:loads"}
    c.append(Case("omp_threads_zero", [Step(TR + [OUT], "either", env={"OMP_NUM_THREADS": "0"})]))
    c.append(Case("omp_threads_abc", [Step(["toy", "detector-accuracy", "--n", "4"], "either",
                                           env={"OMP_NUM_THREADS": "abc"})]))
    c.append(Case("home_unwritable", [Step(["toy", "detector-accuracy", "--n", "4"], "either",
                                           env={"HOME": "/proc", "XDG_CACHE_HOME": "/proc/x"})]))
    c.append(Case("cwd_deleted_relative_out", [Step(["generate", "--model", "tiny", "--prompt", "a", "--steps", "2",
                                                     "--out", "o"], "either", cwd="{d}")],
                  check=exists("o/*.png")))
    c.append(ok("train_relative_output_from_other_cwd", ["train", "{root}/configs/toy_stage1.yaml", "train.steps=2",
                                                         "train.batch_size=4", "train.eval_geneval=false",
                                                         "train.output_dir=rel", "--no-progress"],
                check=exists("rel/trainable.safetensors")))
    c[-1].steps[0].cwd = "{d}"
    c.append(ok("train_shipped_config_by_name", ["train", "toy_stage1.yaml", "train.steps=2", "train.batch_size=4",
                                                 "train.eval_geneval=false", OUT, "--no-progress"],
                check=last_step("out/metrics.jsonl", 2)))
    c[-1].steps[0].cwd = "{d}"
    return c


def more_cases() -> list[Case]:
    return faults() + damaged() + configs()


__all__ = ["Case", "Step", "truncate", "symlink"]
