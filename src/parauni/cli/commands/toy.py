"""``parauni toy ...``: the toy world's commands (pretrain its models, evaluate, reproduce); each toy module
registers its own command."""

from __future__ import annotations

from ...toy import detector_accuracy, evaluation, probe, reproduce, train_prior, train_rewards, train_vlm


def add_parser(sub) -> None:
    toy = sub.add_parser("toy", help="the toy world: pretrain its models, evaluate").add_subparsers(
        dest="toy_command", required=True)
    for module in (train_vlm, train_prior, train_rewards, evaluation, detector_accuracy, reproduce, probe):
        module.add_parser(toy)  # each registers its command and its handler, as every other command module
